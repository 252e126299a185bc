"""Calls the project's real WSGI application as gunicorn hands requests over (client address,
query string, a pod's IP as host), and reads Prometheus expositions: for the operability tests."""

from __future__ import annotations

import io
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from featureops_site.wsgi import application


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def wsgi(method: str, path: str, *, query: str = "", remote_addr: str = "127.0.0.1",
         headers: dict[str, str] | None = None, body: bytes = b"") -> Answer:
    """One request through featureops_site.wsgi.application, as gunicorn would hand it over."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "10.0.0.7",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": remote_addr,
        "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "10.0.0.7:8000",  # a probe addresses the pod by its IP: in no ALLOWED_HOSTS
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    captured: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        captured["status"], captured["headers"] = int(status.split()[0]), dict(response_headers)

    chunks = application(environ, start_response)
    payload = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return Answer(captured["status"], captured["headers"], payload)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition, or None if it is absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None
