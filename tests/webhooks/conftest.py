"""A real HTTP(S) receiver on loopback, a name server the test controls, and the Celery
hand-off recorded instead of sent."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing_service
from webhooks import egress, tasks

# The one name the HTTPS receiver's certificate is for.
TLS_NAME = "hooks.example.test"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next (status, delay in seconds) of `script`; the last one repeats."""

    url: str
    port: int = 0
    script: list[tuple[int, float]] = field(default_factory=lambda: [(200, 0.0)])
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # What each answer carries besides its status: a reason phrase (None: the standard one),
    # a body, and where 3xx answers point.
    reason: str | None = None
    body: bytes = b"ok"
    location: str = "http://127.0.0.1:9/elsewhere"
    # The names TLS clients asked for (SNI), for the HTTPS receiver.
    server_names: list[str | None] = field(default_factory=list)

    def answer(self) -> tuple[int, float]:
        with self.lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@contextlib.contextmanager
def _serve(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
            hook = state["receiver"]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with hook.lock:
                hook.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status, delay = hook.answer()
            time.sleep(delay)
            try:
                self.send_response(status, hook.reason)
                if 300 <= status < 400:
                    self.send_header("Location", hook.location)
                self.send_header("Content-Length", str(len(hook.body)))
                self.end_headers()
                self.wfile.write(hook.body)
            except OSError:
                pass  # the client gave up (timeout): nothing to answer

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that refused our certificate: its test says so

    server = Server(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    scheme = "http"
    if tls is not None:
        def remember_name(_sock: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext) -> None:
            state["receiver"].server_names.append(server_name)

        tls.sni_callback = remember_name
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    state["receiver"] = Receiver(url=f"{scheme}://127.0.0.1:{port}/hooks/featureops", port=port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state["receiver"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP receiver on 127.0.0.1. Webhooks reach it only with `allow_loopback`."""
    with _serve() as hook:
        yield hook


@pytest.fixture(scope="session")
def receiver_certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate (with its key) for hooks.example.test, made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing_service("openssl is not installed (needed to make a test certificate)")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={TLS_NAME}", "-addext", f"subjectAltName=DNS:{TLS_NAME}",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    return folder


@pytest.fixture
def tls_receiver(receiver_certificate: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """An HTTPS receiver on 127.0.0.1 whose certificate names hooks.example.test only; this
    machine's trust store (SSL_CERT_FILE) holds that certificate alone."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(receiver_certificate / "cert.pem", receiver_certificate / "key.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(receiver_certificate / "cert.pem"))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with _serve(tls) as hook:
        yield hook


@pytest.fixture
def allow_loopback(settings: Any) -> Any:
    """The operator allows 127.0.0.1 (as an on-premise one allows its receivers' network), so
    the loopback receivers can be reached."""
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    return settings


@dataclass
class NameServer:
    """Answers for the names a test sets; other names go to the real resolver. Each name's
    answers are used in turn, the last one repeating; `lookups` lists the names asked."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)

    def set(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = list(answers)

    def answer(self, name: str) -> list[str]:
        self.lookups.append(name)
        answers = self.answers[name]
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> NameServer:
    """The environment's DNS, controlled by the test: socket.getaddrinfo as webhooks.egress
    sees it."""
    name_server = NameServer()
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,  # noqa: A002
                    flags: int = 0) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in name_server.answers:
            return real_getaddrinfo(host, port, family, type, proto, flags)
        addresses = name_server.answer(name)
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port), 0, 0))
                if ":" in address else
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))
                for address in addresses]

    monkeypatch.setattr(egress.socket, "getaddrinfo", getaddrinfo)
    return name_server


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Delivery ids handed to Celery after commit (the broker itself is not involved)."""
    calls: list[int] = []
    monkeypatch.setattr(tasks.deliver_webhook, "delay", lambda delivery_id: calls.append(delivery_id))
    return calls


@pytest.fixture
def fast_webhooks(settings: Any) -> Any:
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    return settings
