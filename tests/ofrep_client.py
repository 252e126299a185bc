"""Calls the project's real WSGI application (the one gunicorn serves) in-process."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from featureops_site.wsgi import application


@dataclass
class WsgiResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    _json: Any = field(default=None, repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


def call(method: str, path: str, *, body: bytes | str | dict | None = None, headers: dict[str, str] | None = None,
         content_length: str | None = None) -> WsgiResponse:
    if isinstance(body, dict):
        body = json.dumps(body)
    raw = body.encode() if isinstance(body, str) else (body or b"")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "testserver",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": io.BytesIO(raw), "wsgi.errors": io.StringIO(),
        "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": content_length if content_length is not None else str(len(raw)),
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    captured: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        captured["status"] = int(status.split()[0])
        captured["headers"] = dict(response_headers)

    chunks = application(environ, start_response)
    payload = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return WsgiResponse(captured["status"], captured["headers"], payload)


def evaluate(key: str | None, sdk_key: str, context: Any = None, **kwargs: Any) -> WsgiResponse:
    path = f"/ofrep/v1/evaluate/flags/{key}" if key else "/ofrep/v1/evaluate/flags"
    body = kwargs.pop("body", None)
    if body is None:
        body = {} if context is None else {"context": context}
    headers = {"Authorization": f"Bearer {sdk_key}", **kwargs.pop("headers", {})}
    return call("POST", path, body=body, headers=headers, **kwargs)
