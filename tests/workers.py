"""Real Celery workers for tests: in their own processes, on the test database and the
configured broker, on queues of the test's own (a unique CELERY_QUEUE_PREFIX), so other
consumers of a shared broker never take the test's tasks, nor the test theirs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from django.conf import settings

from featureops_site.celery import app as celery_app
from featureops_site.queues import QUEUES, task_routes
from tests.conftest import missing_service
from tests.servers import database_url_from_settings


def require_broker() -> None:
    """Skip (or fail, with REQUIRE_SERVICES=1) when the configured broker is unreachable."""
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker means it is absent
        missing_service(f"the Celery broker {celery_app.conf.broker_url} is unreachable: {exc}")


def unique_prefix(name: str) -> str:
    return f"test-{name}-{uuid.uuid4().hex[:12]}."


@contextlib.contextmanager
def routed_with_prefix(prefix: str) -> Iterator[None]:
    """Within the block, tasks this process sends (delay, on-commit enqueues) go to the
    prefixed queues, as a deployment with CELERY_QUEUE_PREFIX=prefix would send them."""
    conf = celery_app.conf
    saved = conf.task_routes
    conf.task_routes = task_routes(prefix)
    _reset_router()
    try:
        yield
    finally:
        conf.task_routes = saved
        _reset_router()


def _reset_router() -> None:
    amqp = celery_app.amqp
    amqp.flush_routes()
    amqp.__dict__.pop("router", None)  # a cached property holding the old routes


def worker_env(tmp_path: Path, prefix: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "DEBUG": "0", "SECRET_KEY": "test-worker", "ALLOWED_HOSTS": "localhost",
        "DATABASE_URL": database_url_from_settings(), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_QUEUE_PREFIX": prefix, "EMAIL_BACKEND": "file", "EMAIL_FILE_PATH": str(tmp_path / "mail"),
        "FEATUREOPS_VAR_DIR": str(tmp_path), **extra,
    }


def start_worker(tmp_path: Path, prefix: str, *, queues: Iterable[str] = tuple(QUEUES), beat: bool = False,
                 concurrency: int = 1, name: str = "worker", env: dict[str, str] | None = None,
                 pool: str = "prefork", loglevel: str = "WARNING",
                 stdout: object = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """`celery worker` consuming the given queues (prefixed), with embedded beat if asked."""
    command = [sys.executable, "-m", "celery", "-A", "featureops_site", "worker",
               "-Q", ",".join(f"{prefix}{queue}" for queue in queues), "-c", str(concurrency), "-P", pool,
               "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h",
               "--without-gossip", "--without-mingle", "-l", loglevel]
    if beat:
        command += ["-B", "-s", str(tmp_path / f"beat-schedule-{name}")]
    return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        command, env=env or worker_env(tmp_path, prefix), cwd=settings.BASE_DIR,
        stdout=stdout, stderr=subprocess.STDOUT)


def stop_worker(worker: subprocess.Popen[bytes], prefix: str | None = None, timeout: float = 30) -> str:
    """Warm shutdown (SIGTERM), then the worker's output. With the prefix, the test's queues
    are deleted from the broker too (beat sends to every queue, consumed or not)."""
    if worker.poll() is None:
        worker.terminate()
    try:
        output = worker.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        worker.kill()
        output = worker.communicate()[0]
    if prefix:
        delete_queues(prefix)
    return (output or b"").decode(errors="replace")


def delete_queues(prefix: str) -> None:
    with celery_app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in QUEUES:
            channel.queue_delete(f"{prefix}{queue}")
