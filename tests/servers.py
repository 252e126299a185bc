"""Starting the production server (gunicorn) on loopback, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_from_settings() -> str:
    """The URL of the database Django is using now (in tests: the test database)."""
    from django.db import connection

    params = connection.settings_dict
    if connection.vendor != "postgresql":
        raise RuntimeError("gunicorn workers need a database shared between processes: PostgreSQL")
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{params.get('HOST') or '127.0.0.1'}:{params.get('PORT') or 5432}/{params['NAME']}"


@contextlib.contextmanager
def gunicorn(database_url: str, *, workers: int = 3, worker_class: str = "sync", threads: int = 1,
             poll_seconds: float = 0.2) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "DEBUG": "0", "SECRET_KEY": "gunicorn-test-secret-key-xx",
           "ALLOWED_HOSTS": "127.0.0.1,localhost", "OFREP_SNAPSHOT_POLL_SECONDS": str(poll_seconds),
           "LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "gunicorn", "featureops_site.wsgi:application", "--bind", f"127.0.0.1:{port}",
               "--workers", str(workers), "--worker-class", worker_class, "--threads", str(threads),
               "--log-level", "warning", "--access-logfile", "-" if os.environ.get("GUNICORN_ACCESS_LOG") else "/dev/null"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base, process, "gunicorn",
                             lambda: (process.stderr.read() or b"").decode())  # type: ignore[union-attr]
        yield base
    finally:
        stop(process)


def wait_until_answering(base: str, process: subprocess.Popen[bytes], name: str, errors: Callable[[], str],
                         seconds: float = 30) -> None:
    """Until the server at `base` answers (OFREP's configuration: 401 without a key); if the
    process exits or the time runs out, fail with the end of what it wrote (`errors()`)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(base + "/ofrep/v1/configuration", timeout=1)  # noqa: S310
        except urllib.error.HTTPError:
            return  # 401: the server answers
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise RuntimeError(f"{name} did not start: " + errors()[-2000:]) from None
            time.sleep(0.1)


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()



@contextlib.contextmanager
def uvicorn(database_url: str, *, port: int | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """The whole site (console, OFREP, event streams) on one uvicorn process serving
    `featureops_site.asgi`. `port` lets a test restart it where its clients are connected;
    `env` adds to (or overrides) the variables `gunicorn()` sets. Its stderr goes to a file (a
    pipe nobody reads would block a chatty server) and is shown if it does not start."""
    port = port or free_port()
    environment = {**os.environ, "DATABASE_URL": database_url, "DEBUG": "0",
                   "SECRET_KEY": "gunicorn-test-secret-key-xx", "ALLOWED_HOSTS": "127.0.0.1,localhost",
                   "OFREP_SNAPSHOT_POLL_SECONDS": "0.2", "LOG_LEVEL": "WARNING", **(env or {})}
    command = [sys.executable, "-m", "uvicorn", "featureops_site.asgi:application", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log",
               # An open event stream never ends by itself: without a limit uvicorn waits for it
               # on SIGTERM until stop() kills it (15 s).
               "--timeout-graceful-shutdown", "2"]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,  # noqa: S603
                                   stderr=stderr)
        base = f"http://127.0.0.1:{port}"
        try:

            def errors() -> str:
                stderr.seek(0)
                return stderr.read().decode()

            wait_until_answering(base, process, "uvicorn", errors)
            yield base
        finally:
            stop(process)
