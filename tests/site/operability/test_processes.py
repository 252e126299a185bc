"""Operability with the real processes: Celery workers reporting their heartbeats (and
going silent when killed, stopped, or cut off from the database), gunicorn with several
workers counting requests for /metrics across processes, probes under the production HTTPS
settings, and JSON logs on the stderr of a worker and of gunicorn."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from audit.services import SystemActor
from featureops_site.celery import app as celery_app
from featureops_site.models import TaskFailureCount, WorkerHeartbeat
from featureops_site.queues import QUEUES
from flags import services
from flags.demo import seed_demo
from flags.models import Environment
from tests.ops_client import metric, wsgi
from tests.servers import ROOT, database_url_from_settings, free_port, stop
from tests.workers import require_broker, start_worker, stop_worker, unique_prefix, worker_env

HEARTBEAT = 1  # seconds, in the workers these tests start
STALE = 3


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, output: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{output()}", pytrace=False)


def worker_row(prefix_name: str) -> WorkerHeartbeat | None:
    return WorkerHeartbeat.objects.filter(hostname__startswith=prefix_name).first()


def kill_worker_tree(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its pool processes, as an OOM kill or a lost machine would: no shutdown runs."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    worker.kill()
    worker.wait(timeout=10)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("ops-staff", password="pw-for-tests-1", is_staff=True)


# --- Celery workers ----------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_worker__reports_then_killed__ready_and_listed_then_stale_503_and_red(
        tmp_path: Path, settings: Any, client: Any, staff: Any) -> None:
    require_broker()
    settings.WORKER_STALE_SECONDS = STALE
    prefix = unique_prefix("heartbeat")
    # Given a worker consuming every queue, reporting every second
    env = worker_env(tmp_path, prefix, WORKER_HEARTBEAT_SECONDS=str(HEARTBEAT), WORKER_STALE_SECONDS=str(STALE))
    worker = start_worker(tmp_path, prefix, name="beating", env=env)
    try:
        row = wait_for(lambda: worker_row("beating-"), timeout=60, what="the worker's first heartbeat")
        # Then it is listed with the queues it consumes (unprefixed), and the system is ready
        assert sorted(row.queues) == sorted(QUEUES) and row.stopped_at is None
        first_seen = row.last_seen
        wait_for(lambda: worker_row("beating-").last_seen > first_seen, timeout=10, what="a second heartbeat")
        ready = wsgi("GET", "/readyz")
        assert ready.status == 200, ready.text
        client.force_login(staff)
        page = client.get("/system/").content.decode()
        assert row.hostname in page and 'data-state="live"' in page and "No live worker" not in page

        # When a task fails on it (the wrong arguments: a TypeError in the worker)
        celery_app.send_task("flags.tasks.recompute_lifecycle_stages", args=["unexpected"],
                             queue=f"{prefix}reminders")
        failure = wait_for(lambda: TaskFailureCount.objects.filter(task="flags.tasks.recompute_lifecycle_stages")
                           .first(), timeout=30, what="the failure to be counted")
        # Then the failure is counted once, visible to /metrics in this (web) process
        assert (failure.failures, failure.last_error) == (1, "TypeError")
        text = wsgi("GET", "/metrics").text
        assert metric(text, "featureops_task_failures_total", task="flags.tasks.recompute_lifecycle_stages",
                      queue="reminders") == 1
        assert metric(text, "featureops_queue_live_workers", queue="safety") == 1
        assert metric(text, "featureops_worker_last_seen_seconds", worker=row.hostname, queue="safety") < STALE

        # When the worker is killed outright (no shutdown code runs)
        kill_worker_tree(worker)
        killed_at = time.monotonic()
        # Then within the stale window (plus a heartbeat) readiness fails, naming every queue
        not_ready = wait_for(lambda: (answer := wsgi("GET", "/readyz")).status == 503 and answer,
                             timeout=STALE + 2 * HEARTBEAT + 5, what="/readyz to turn 503")
        assert time.monotonic() - killed_at <= STALE + 2 * HEARTBEAT + 1
        workers_check = not_ready.json()["checks"]["workers"]
        assert workers_check["ok"] is False
        assert all(not queue["ok"] for queue in workers_check["queues"].values())
        # and the status page shows the worker stale, in red, with the warning in the navigation
        page = client.get("/system/").content.decode()
        assert 'data-state="stale"' in page and 'class="badge bad" data-testid="last-seen"' in page
        assert "No live worker for: <strong>safety, telemetry, notifications, reminders</strong>" in page
        assert 'data-testid="nav-worker-warning"' in page
        assert worker_row("beating-").stopped_at is None  # killed, not stopped: it just went silent
    finally:
        stop_worker(worker, prefix)


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_worker__warm_shutdown__marked_stopped_and_not_ready_at_once(tmp_path: Path, settings: Any,
                                                                    client: Any, staff: Any) -> None:
    require_broker()
    settings.WORKER_STALE_SECONDS = 60  # a long window: only the stop mark can make it fail at once
    prefix = unique_prefix("stopping")
    env = worker_env(tmp_path, prefix, WORKER_HEARTBEAT_SECONDS=str(HEARTBEAT))
    worker = start_worker(tmp_path, prefix, name="stopping", queues=["safety"], env=env)
    try:
        wait_for(lambda: worker_row("stopping-"), timeout=60, what="the worker's first heartbeat")
        assert wsgi("GET", "/readyz", query="exclude=workers").status == 200
        safety = wsgi("GET", "/readyz").json()["checks"]["workers"]["queues"]["safety"]
        assert safety["ok"] is True
    finally:
        # When the worker is stopped as a deployment stops it (SIGTERM, warm shutdown)
        output = stop_worker(worker, prefix)
    # Then its row says so, and safety has no live worker straight away
    row = worker_row("stopping-")
    assert row.stopped_at is not None, output[-3000:]
    safety = wsgi("GET", "/readyz").json()["checks"]["workers"]["queues"]["safety"]
    assert safety["ok"] is False and safety["live_workers"] == 0
    client.force_login(staff)
    page = client.get("/system/").content.decode()
    assert 'data-state="stopped"' in page and "stopped 0" in page


class TcpProxy:
    """A TCP relay to PostgreSQL that can be cut (connections dropped, new ones refused) and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                with contextlib.suppress(OSError):  # wakes the blocked accept(): close() alone would not
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update({client, upstream})
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_worker__database_unreachable_for_a_while__worker_survives_and_reports_again(tmp_path: Path) -> None:
    require_broker()
    # Given a worker reaching the database through a relay
    url = database_url_from_settings()
    host_port, name = url.rsplit("@", 1)[1].rsplit("/", 1)
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    proxy.start()
    prefix = unique_prefix("dbcut")
    env = worker_env(tmp_path, prefix, WORKER_HEARTBEAT_SECONDS=str(HEARTBEAT),
                     DATABASE_URL=url.replace(f"@{host_port}/", f"@127.0.0.1:{proxy.port}/"))
    worker = start_worker(tmp_path, prefix, name="dbcut", queues=["telemetry"], env=env)
    try:
        wait_for(lambda: worker_row("dbcut-"), timeout=60, what="the worker's first heartbeat")
        # When the database becomes unreachable for four heartbeats
        proxy.cut()
        cut_at = timezone.now()
        time.sleep(4 * HEARTBEAT + 0.5)
        # Then the worker is still running
        assert worker.poll() is None
        last_before = worker_row("dbcut-").last_seen
        assert last_before <= cut_at
        # When the database is back, its heartbeat resumes by itself
        proxy.start()
        wait_for(lambda: worker_row("dbcut-").last_seen > cut_at, timeout=15, what="a heartbeat after the outage")
        assert worker.poll() is None
    finally:
        output = stop_worker(worker, prefix)
        proxy.cut()
    # and each failed write was logged and retried, not raised
    assert "worker heartbeat not recorded, retrying at the next tick" in output, output[-3000:]


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_worker_logs__production__every_stderr_line_is_json(tmp_path: Path) -> None:
    require_broker()
    prefix = unique_prefix("jsonlogs")
    env = worker_env(tmp_path, prefix)  # DEBUG=0, LOG_FORMAT unset: production's default
    env.pop("LOG_FORMAT", None)
    stderr_path = tmp_path / "worker.stderr"
    with stderr_path.open("wb") as stderr:
        worker = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "celery", "-A", "featureops_site", "worker", "-Q", f"{prefix}safety", "-c", "1",
             "-n", f"jsonlogs-{os.getpid()}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_for(lambda: b"ready." in stderr_path.read_bytes(), timeout=60, what="the worker to be ready",
                     output=lambda: stderr_path.read_text(errors="replace"))
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    lines = [line for line in stderr_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # each line on its own is a JSON object
    assert all({"timestamp", "level", "logger", "message"} <= set(record) for record in records)
    assert any(record["logger"] == "celery.apps.worker" and record["message"].endswith("ready.") for record in records)


# --- gunicorn ----------------------------------------------------------------------------------


@contextlib.contextmanager
def gunicorn_production(tmp_path: Path, *, workers: int, database_url: str | None = None, args: tuple[str, ...] = (),
                        **extra_env: str) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """gunicorn as the production docs start it (featureops_site/gunicorn.conf.py), DEBUG off,
    HTTPS redirect on and a public host name only; stderr kept in a file."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url or database_url_from_settings(), "DEBUG": "0",
           "SECRET_KEY": "gunicorn-ops-test-secret-key-0123456789abcdef", "ALLOWED_HOSTS": "console.example.com",
           "SECURE_SSL_REDIRECT": "1", "OFREP_SNAPSHOT_POLL_SECONDS": "0.2", "LOG_LEVEL": "INFO", **extra_env}
    env.pop("LOG_FORMAT", None)
    stderr_path = tmp_path / "gunicorn.stderr"
    stderr = stderr_path.open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "gunicorn", "-c", "featureops_site/gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--log-level", "info", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http("GET", base + "/healthz")[0] == 200, timeout=30, what="gunicorn to answer",
                 output=lambda: stderr_path.read_text(errors="replace"))
        yield base, process, stderr_path
    finally:
        stop(process)
        stderr.close()


def http(method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except OSError:
        return 0, {}, b""


def counter_total(text: str, name: str, **labels: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_gunicorn__three_workers__metrics_count_every_process_s_requests(tmp_path: Path) -> None:
    # Given the demo, an SDK key, and gunicorn with three workers as in production
    project, _ = seed_demo()
    production = Environment.objects.get(project=project, key="production")
    key = services.sdk_key_create(environment=production, name="ops", actor=SystemActor("tests"))[1]
    metrics_dir = tmp_path / "metrics"
    # (each worker process is replaced after 15 requests, as --max-requests does in production to
    # bound memory: the requests are spread over processes, several of them gone by the scrape)
    with gunicorn_production(tmp_path, workers=3, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                             args=("--max-requests", "15")) as (base, _, stderr):
        # Then the probes answer over plain HTTP for an IP-addressed host, while the console redirects
        assert http("GET", base + "/healthz")[0] == 200
        assert http("GET", base + "/readyz?exclude=workers")[0] == 200
        status, headers, _ = http("GET", base + "/login/", headers={"Host": "console.example.com"})
        assert status == 301 and headers["Location"].startswith("https://")
        # When 60 evaluations arrive from six clients at once
        url = base + "/ofrep/v1/evaluate/flags/support_assistant_profile"
        body = json.dumps({"context": {"targetingKey": "u", "accountId": "acct-1"}}).encode()
        answers: list[int] = []

        def client() -> None:
            for _ in range(10):
                answers.append(http("POST", url, headers={"Authorization": f"Bearer {key}",
                                                          "Content-Type": "application/json"}, body=body)[0])

        threads = [threading.Thread(target=client) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert answers == [200] * 60
        # Then at least four processes counted them (60 requests, 15 at most each), some gone since,
        counting = {path.stem.split("_")[-1] for path in metrics_dir.glob("counter_*.db")}
        assert len(counting) >= 4, counting
        # and every scrape, whichever process answers it, reports all 60
        for _ in range(8):
            text = http("GET", base + "/metrics")[2].decode()
            assert counter_total(text, "featureops_ofrep_requests_total", endpoint="single", status="200") == 60
            assert counter_total(text, "featureops_ofrep_request_duration_seconds_count", endpoint="single") == 60
    # and gunicorn's own lines and the application's are JSON, one object per line
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any(record["logger"] == "gunicorn.error" and record["message"].startswith("Booting worker")
               for record in records)
    assert all({"timestamp", "level", "logger", "message"} <= set(record) for record in records)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_gunicorn__database_unreachable__readyz_503_metrics_say_database_down(tmp_path: Path) -> None:
    # Given gunicorn whose database does not answer (nothing listens on its port)
    dead = f"postgres://postgres@127.0.0.1:{free_port()}/featureops"
    with gunicorn_production(tmp_path, workers=1, database_url=dead) as (base, _, _stderr):
        # Then the process is up, but not ready: the database and the snapshots fail, by name
        assert http("GET", base + "/healthz")[0] == 200
        status, _, body = http("GET", base + "/readyz?exclude=workers")
        assert status == 503
        checks = json.loads(body)["checks"]
        assert checks["database"] == {"ok": False, "detail": "unreachable (OperationalError)"}
        assert checks["snapshots"]["ok"] is False and "no snapshot loaded" in checks["snapshots"]["detail"]
        assert b"127.0.0.1" not in body  # the error's text (hosts, ports) stays in the logs
        # and the scrape still answers, saying the database is down
        status, _, text = http("GET", base + "/metrics")
        assert status == 200
        assert metric(text.decode(), "featureops_database_up") == 0
