"""Operability (issue 15, item 6; item 2's "worker last seen"): /healthz, /readyz, /metrics, the
System status page and its navigation warning, JSON logs. Called through the project's real
WSGI application (the one gunicorn serves) or Django's test client; real workers, gunicorn and
the log format of real processes are in tests/test_operability_processes.py."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.context import audit_context
from audit.services import SystemActor
from featureops_site.celery import app as celery_app
from featureops_site.log_format import json_formatter
from featureops_site.models import TaskFailureCount, WorkerHeartbeat
from featureops_site.queues import QUEUES
from featureops_site.services import task_failure_record, worker_heartbeat_record
from flags import services
from flags.constants import Role
from flags.demo import seed_demo
from flags.models import Environment
from flags.snapshot_store import get_store
from telemetry.models import Event
from telemetry.services import events_aggregate
from tests.factories import TEST_ACTOR, make_project
from tests.ops_client import metric, wsgi
from tests.workers import delete_queues, require_broker, unique_prefix

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "support_assistant_profile"


# --- helpers -----------------------------------------------------------------------------------


def scrape(**kwargs: Any) -> str:
    answer = wsgi("GET", "/metrics", **kwargs)
    assert answer.status == 200, answer.text
    return answer.text


def heartbeat(hostname: str, queues: list[str], *, seconds_ago: float = 0, stopped: bool = False) -> None:
    now = timezone.now()
    worker_heartbeat_record(hostname=hostname, queues=queues, pid=4242, started_at=now - datetime.timedelta(hours=1),
                            now=now - datetime.timedelta(seconds=seconds_ago))
    if stopped:
        WorkerHeartbeat.objects.filter(hostname=hostname).update(stopped_at=now)


def every_queue_live() -> None:
    heartbeat("all@host-a", list(QUEUES))


@pytest.fixture(autouse=True)
def _fresh_caches(fresh_caches: None) -> None:
    """Every test here starts and ends with empty process caches (snapshots, metric ids)."""


@pytest.fixture
def sdk_key(db: None) -> str:
    project, _ = seed_demo()
    production = Environment.objects.get(project=project, key="production")
    return services.sdk_key_create(environment=production, name="ops-tests", actor=SystemActor("tests"))[1]


# --- /healthz ----------------------------------------------------------------------------------


def test_healthz__process_up__200_without_touching_the_database() -> None:
    # Given a test without database access (any query would raise)
    # When a probe asks, addressing the pod by its IP (no ALLOWED_HOSTS entry)
    answer = wsgi("GET", "/healthz")
    # Then it answers 200 "ok" JSON, uncached
    assert answer.status == 200 and answer.json() == {"status": "ok"}
    assert answer.headers["Content-Type"] == "application/json" and answer.headers["Cache-Control"] == "no-store"
    assert wsgi("POST", "/healthz").status == 405


# --- /readyz -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_readyz__database_snapshots_and_a_live_worker_per_queue__200(sdk_key: str) -> None:
    # Given a worker seen 5 s ago on every queue
    heartbeat("all@host-a", list(QUEUES), seconds_ago=5)
    # When the probe asks
    answer = wsgi("GET", "/readyz")
    # Then every check passes and is named
    assert answer.status == 200, answer.text
    body = answer.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "snapshots", "workers"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["snapshots"]["environments"] == Environment.objects.count()
    assert body["checks"]["workers"]["queues"]["safety"] == {"ok": True, "live_workers": 1, "last_seen_seconds_ago": 5}


@pytest.mark.django_db
def test_readyz__a_queue_whose_worker_went_silent__503_naming_the_queue_not_the_host(settings: Any) -> None:
    # Given workers on every queue but safety, whose only worker was last seen 2 minutes ago,
    # and a stopped worker that consumed safety too
    settings.WORKER_STALE_SECONDS = 45
    heartbeat("main@host-a.internal", ["telemetry", "notifications", "reminders"])
    heartbeat("safety@host-b.internal", ["safety"], seconds_ago=120)
    heartbeat("spare@host-c.internal", ["safety"], stopped=True)
    # When the probe asks
    answer = wsgi("GET", "/readyz")
    # Then it is not ready, because of the workers alone, and says which queue
    assert answer.status == 503
    checks = answer.json()["checks"]
    assert checks["database"]["ok"] and checks["snapshots"]["ok"]
    assert checks["workers"]["ok"] is False
    assert checks["workers"]["queues"]["safety"] == {"ok": False, "live_workers": 0, "last_seen_seconds_ago": 0}
    assert "safety" in checks["workers"]["detail"] and "telemetry" not in checks["workers"]["detail"]
    # and no host name leaks to an unauthenticated caller
    assert "host-" not in answer.text and "internal" not in answer.text


@pytest.mark.django_db
def test_readyz__stale_window_from_settings__a_heartbeat_just_inside_passes(settings: Any) -> None:
    settings.WORKER_STALE_SECONDS = 30
    heartbeat("all@host-a", list(QUEUES), seconds_ago=25)
    assert wsgi("GET", "/readyz").status == 200
    settings.WORKER_STALE_SECONDS = 20
    assert wsgi("GET", "/readyz").status == 503


@pytest.mark.django_db
def test_readyz__exclude_workers__ready_without_any_worker_and_says_so() -> None:
    # Given no worker at all
    # When the evaluation pool's probe excludes the workers check
    answer = wsgi("GET", "/readyz", query="exclude=workers")
    # Then the process is ready to serve, and the body says what was skipped
    assert answer.status == 200, answer.text
    assert set(answer.json()["checks"]) == {"database", "snapshots"} and answer.json()["excluded"] == ["workers"]
    # and without the exclusion it is not
    assert wsgi("GET", "/readyz").status == 503
    assert wsgi("GET", "/readyz", query="exclude=workers,snapshots&exclude=database").json()["checks"] == {}


def test_readyz__unknown_check_excluded__400_listing_the_checks() -> None:
    answer = wsgi("GET", "/readyz", query="exclude=worker")
    assert answer.status == 400
    assert "worker" in answer.json()["errorDetails"] and "database, snapshots, workers" in answer.json()["errorDetails"]


# --- /metrics: access --------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics__default_access__loopback_only(settings: Any) -> None:
    assert settings.METRICS_ALLOWED_NETWORKS == ["127.0.0.0/8", "::1/128"]
    assert wsgi("GET", "/metrics", remote_addr="127.0.0.1").status == 200
    assert wsgi("GET", "/metrics", remote_addr="::1").status == 200
    assert wsgi("GET", "/metrics", remote_addr="::ffff:127.0.0.1").status == 200
    refused = wsgi("GET", "/metrics", remote_addr="10.20.0.5")
    assert refused.status == 403 and b"featureops" not in refused.body
    assert wsgi("GET", "/metrics", remote_addr="").status == 403


@pytest.mark.django_db
def test_metrics__proxy_on_the_same_host__client_judged_by_the_proxy_s_address(settings: Any) -> None:
    # Given a reverse proxy on this host relaying the public (TRUSTED_PROXY_COUNT=1)
    settings.TRUSTED_PROXY_COUNT = 1
    # When someone on the internet asks for /metrics through it, the request arrives from loopback
    public = wsgi("GET", "/metrics", remote_addr="127.0.0.1", headers={"X-Forwarded-For": "203.0.113.9"})
    # Then it is refused, while Prometheus scraping the process directly still gets in
    assert public.status == 403
    assert wsgi("GET", "/metrics", remote_addr="127.0.0.1").status == 200


@pytest.mark.django_db
def test_metrics__allowed_networks__scraper_network_in_others_out(settings: Any) -> None:
    settings.METRICS_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    assert wsgi("GET", "/metrics", remote_addr="10.20.3.4").status == 200
    assert wsgi("GET", "/metrics", remote_addr="127.0.0.1").status == 403


@pytest.mark.django_db
def test_metrics__token_set__bearer_token_required_from_anywhere(settings: Any) -> None:
    settings.METRICS_TOKEN = "t" * 40
    assert wsgi("GET", "/metrics", remote_addr="127.0.0.1").status == 401  # loopback is not enough
    wrong = wsgi("GET", "/metrics", remote_addr="10.9.9.9", headers={"Authorization": "Bearer " + "x" * 40})
    assert wrong.status == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    right = wsgi("GET", "/metrics", remote_addr="198.51.100.4", headers={"Authorization": "Bearer " + "t" * 40})
    assert right.status == 200 and "featureops_database_up 1.0" in right.text


def test_settings__short_metrics_token__refused_at_start() -> None:
    env = {**os.environ, "DEBUG": "1", "METRICS_TOKEN": "short"}
    result = subprocess.run([sys.executable, "-c", "import featureops_site.settings"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "METRICS_TOKEN must be at least 32 characters" in result.stderr


# --- /metrics: what it reports -----------------------------------------------------------------


@pytest.mark.django_db
def test_metrics__ofrep_requests__counted_by_endpoint_and_status_and_timed(sdk_key: str) -> None:
    # Given the counters as they stand (they live as long as the process)
    before = scrape()
    auth = {"Authorization": f"Bearer {sdk_key}"}
    context = json.dumps({"context": {"targetingKey": "u1", "accountId": "acct-1"}}).encode()
    # When applications evaluate: two single flags, one unknown flag, one bulk, one bad key
    for _ in range(2):
        assert wsgi("POST", f"/ofrep/v1/evaluate/flags/{PROFILE}", headers=auth, body=context).status == 200
    assert wsgi("POST", "/ofrep/v1/evaluate/flags/no_such_flag", headers=auth, body=context).status == 404
    assert wsgi("POST", "/ofrep/v1/evaluate/flags", headers=auth, body=context).status == 200
    assert wsgi("POST", f"/ofrep/v1/evaluate/flags/{PROFILE}", headers={"Authorization": "Bearer nope"},
                body=context).status == 401
    after = scrape()

    # Then each is counted under its endpoint and status, and timed per endpoint
    def moved(name: str, **labels: str) -> float:
        return (metric(after, name, **labels) or 0) - (metric(before, name, **labels) or 0)

    assert moved("featureops_ofrep_requests_total", endpoint="single", status="200") == 2
    assert moved("featureops_ofrep_requests_total", endpoint="single", status="404") == 1
    assert moved("featureops_ofrep_requests_total", endpoint="single", status="401") == 1
    assert moved("featureops_ofrep_requests_total", endpoint="bulk", status="200") == 1
    assert moved("featureops_ofrep_request_duration_seconds_count", endpoint="single") == 4
    assert moved("featureops_ofrep_request_duration_seconds_bucket", endpoint="bulk", le="+Inf") == 1
    assert 0 < moved("featureops_ofrep_request_duration_seconds_sum", endpoint="single") < 5


@pytest.mark.django_db
def test_metrics__ofrep_instrumentation__still_no_database_query_per_evaluation(
        sdk_key: str, django_assert_num_queries: Any) -> None:
    auth = {"Authorization": f"Bearer {sdk_key}"}
    body = json.dumps({"context": {"targetingKey": "u1", "accountId": "acct-1"}}).encode()
    wsgi("POST", f"/ofrep/v1/evaluate/flags/{PROFILE}", headers=auth, body=body)  # the store loads once
    with django_assert_num_queries(0):
        assert wsgi("POST", f"/ofrep/v1/evaluate/flags/{PROFILE}", headers=auth, body=body).status == 200


@pytest.mark.django_db
def test_metrics__events_ingested__accepted_and_rejected_counted_replays_not(sdk_key: str) -> None:
    before = scrape()
    now = timezone.now().isoformat()
    good = {"kind": "exposure", "flag": PROFILE, "variant": "baseline_v3", "served": "baseline_v3", "time": now}
    batch = {"batch_id": uuid.uuid4().hex, "events": [{**good, "unit": "a1"}, {**good, "unit": "a2"}, {"kind": "x"}]}
    auth = {"Authorization": f"Bearer {sdk_key}"}
    # When a batch of two good events and one bad one arrives, then is retried
    for _ in range(2):
        assert wsgi("POST", "/api/v1/events", headers=auth, body=json.dumps(batch).encode()).status == 200
    after = scrape()
    # Then two were accepted and one rejected, once
    assert (metric(after, "featureops_events_ingested_total", outcome="accepted") or 0) - (
        metric(before, "featureops_events_ingested_total", outcome="accepted") or 0) == 2
    assert (metric(after, "featureops_events_ingested_total", outcome="rejected") or 0) - (
        metric(before, "featureops_events_ingested_total", outcome="rejected") or 0) == 1


@pytest.mark.django_db
def test_metrics__aggregation_lag__age_of_the_oldest_waiting_event_then_zero(sdk_key: str) -> None:
    # Given two events received, the older two minutes ago, not aggregated yet
    now = timezone.now().isoformat()
    event = {"kind": "exposure", "flag": PROFILE, "variant": "baseline_v3", "served": "baseline_v3", "time": now}
    for unit in ("a1", "a2"):
        body = json.dumps({"batch_id": uuid.uuid4().hex, "events": [{**event, "unit": unit}]}).encode()
        wsgi("POST", "/api/v1/events", headers={"Authorization": f"Bearer {sdk_key}"}, body=body)
    oldest = Event.objects.order_by("txid", "id").first()
    Event.objects.filter(pk=oldest.pk).update(received_at=timezone.now() - datetime.timedelta(seconds=120))
    # Then the lag is that event's age
    assert 119 <= metric(scrape(), "featureops_telemetry_aggregation_lag_seconds") < 150
    # When aggregation catches up, it is zero
    assert events_aggregate() == 2
    assert metric(scrape(), "featureops_telemetry_aggregation_lag_seconds") == 0


@pytest.mark.django_db
def test_metrics__workers_and_task_failures__from_the_rows_workers_write(settings: Any) -> None:
    # Given one live worker on two queues, one silent for 5 minutes on safety, and failures
    settings.WORKER_STALE_SECONDS = 45
    heartbeat("main@host-a", ["telemetry", "notifications"], seconds_ago=3)
    heartbeat("safety@host-b", ["safety"], seconds_ago=300)
    task_failure_record(task_name="webhooks.tasks.deliver_webhook", error="ConnectionError")
    task_failure_record(task_name="webhooks.tasks.deliver_webhook", error="Timeout")
    text = scrape()
    # Then each worker's last heartbeat is reported per queue, live workers per queue, failures per task
    assert 3 <= metric(text, "featureops_worker_last_seen_seconds", worker="main@host-a", queue="telemetry") < 10
    assert 300 <= metric(text, "featureops_worker_last_seen_seconds", worker="safety@host-b", queue="safety") < 310
    assert metric(text, "featureops_queue_live_workers", queue="safety") == 0
    assert metric(text, "featureops_queue_live_workers", queue="telemetry") == 1
    assert metric(text, "featureops_queue_live_workers", queue="reminders") == 0
    assert metric(text, "featureops_task_failures_total", task="webhooks.tasks.deliver_webhook",
                  queue="notifications") == 2
    row = TaskFailureCount.objects.get()
    assert row.last_error == "Timeout"


@pytest.mark.django_db
def test_metrics__snapshot_age__per_environment_grows_until_a_poll_confirms_it(sdk_key: str) -> None:
    # Given this process's store loaded (the tests poll never, OFREP_SNAPSHOT_POLL_SECONDS=0)
    store = get_store()
    store.freshness()
    time.sleep(1.2)
    # Then each environment's snapshot is as old as the last time a poll found it current
    text = scrape()
    assert metric(text, "featureops_ofrep_snapshots_loaded") == Environment.objects.count()
    assert metric(text, "featureops_ofrep_snapshot_age_seconds", environment="support-assistant/production") >= 1.2
    # When a poll confirms it, the age falls back
    store.refresh()
    assert metric(scrape(), "featureops_ofrep_snapshot_age_seconds", environment="support-assistant/production") < 1


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db
def test_metrics__queue_depths__tasks_waiting_per_queue_from_the_broker(settings: Any) -> None:
    require_broker()
    # Given a deployment's prefixed queues, three tasks waiting on reminders, none on the others
    prefix = unique_prefix("depth")
    settings.CELERY_QUEUE_PREFIX = prefix
    try:
        for _ in range(3):
            celery_app.send_task("flags.tasks.recompute_lifecycle_stages", queue=f"{prefix}reminders")
        text = scrape()
    finally:
        delete_queues(prefix)
    # Then /metrics reads the depths from the broker
    assert metric(text, "featureops_broker_up") == 1
    assert metric(text, "featureops_queue_depth", queue="reminders") == 3
    assert metric(text, "featureops_queue_depth", queue="safety") == 0


@pytest.mark.django_db
def test_metrics__broker_unreachable__broker_up_0_and_the_scrape_still_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a broker nobody answers at (port 1); Celery reads CELERY_BROKER_URL before its conf
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(celery_app.conf, "broker_url", "redis://127.0.0.1:1/0")
    # When Prometheus scrapes
    started = time.monotonic()
    text = scrape()
    elapsed = time.monotonic() - started
    # Then the scrape answers, says the broker is down, and leaves the depths out
    assert metric(text, "featureops_broker_up") == 0
    assert metric(text, "featureops_queue_depth", queue="safety") is None
    assert metric(text, "featureops_database_up") == 1
    assert elapsed < 10


def test_metrics__openmetrics_asked__openmetrics_given(settings: Any, db: None) -> None:
    answer = wsgi("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")


# --- the System status page --------------------------------------------------------------------


@pytest.fixture
def people(db: None, make_user: Any, django_user_model: Any) -> dict[str, Any]:
    project = make_project(key="ops-demo")
    other = make_project(key="ops-other")
    users = {
        "staff": make_user("ops-staff", is_staff=True),
        "root": django_user_model.objects.create_superuser("ops-root", "root@example.com", "pw-for-tests-1"),
        "admin": make_user("ops-admin"),
        "operator": make_user("ops-operator"),
        "viewer": make_user("ops-viewer"),
        "nobody": make_user("ops-nobody"),
    }
    services.membership_grant(project=project, user=users["admin"], role=Role.ADMIN, actor=TEST_ACTOR)
    services.membership_grant(project=project, user=users["operator"], role=Role.OPERATOR, actor=TEST_ACTOR)
    services.membership_grant(project=other, user=users["viewer"], role=Role.VIEWER, actor=TEST_ACTOR)
    return users


def test_status_page__who_may_see_it__staff_superusers_project_admins(client: Any, people: dict[str, Any]) -> None:
    # Anonymous visitors are sent to sign in
    response = client.get("/system/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    # Site staff, superusers and project admins see it
    for name in ("staff", "root", "admin"):
        client.force_login(people[name])
        assert client.get("/system/").status_code == 200, name
    # Everyone else is refused, with the console's 403 page
    for name in ("operator", "viewer", "nobody"):
        client.force_login(people[name])
        response = client.get("/system/")
        assert response.status_code == 403, name
        assert b"System status is for site staff and project admins." in response.content
    assert client.post("/system/").status_code == 405


def test_status_page__no_worker_yet__empty_state_with_the_command(client: Any, people: dict[str, Any],
                                                                  settings: Any) -> None:
    settings.CELERY_QUEUE_PREFIX = "staging."
    client.force_login(people["admin"])
    page = client.get("/system/").content.decode()
    assert "No worker has reported yet" in page
    for queue in ("safety", "telemetry", "notifications", "reminders"):
        assert f"celery -A featureops_site worker --queues=staging.{queue}" in page


def test_status_page__live_stale_and_stopped_workers__each_queue_with_its_workers(
        client: Any, people: dict[str, Any], settings: Any) -> None:
    # Given a live worker on three queues, a stale one on safety and a stopped one on safety
    settings.WORKER_STALE_SECONDS = 45
    heartbeat("main@host-a", ["telemetry", "notifications", "reminders"], seconds_ago=12)
    heartbeat("safety@host-b", ["safety"], seconds_ago=600)
    heartbeat("spare@host-c", ["safety"], stopped=True)
    task_failure_record(task_name="telemetry.tasks.aggregate_events", error="OperationalError")
    client.force_login(people["staff"])
    page = client.get("/system/").content.decode()
    # Then safety is flagged as having no live worker, with both of its workers listed
    assert "No live worker for: <strong>safety</strong>" in page
    # with the command that starts one for that queue alone
    assert "<code>celery -A featureops_site worker --queues=safety</code>." in page
    assert "--queues=telemetry" not in page
    safety_row = page.split('data-testid="queue-safety"')[1].split("</tr>")[0]
    assert "safety@host-b" in safety_row and "spare@host-c" in safety_row and "no live worker" in safety_row
    telemetry_row = page.split('data-testid="queue-telemetry"')[1].split("</tr>")[0]
    assert "main@host-a" in telemetry_row and "1 live" in telemetry_row
    # and each worker's last heartbeat, red when stale
    assert 'data-state="live"' in page and 'data-state="stale"' in page and 'data-state="stopped"' in page
    stale_row = page.split('data-state="stale"')[1].split("</tr>")[0]
    assert 'class="badge bad" data-testid="last-seen">10 min ago' in stale_row
    live_row = page.split('data-state="live"')[1].split("</tr>")[0]
    assert re.search(r'class="badge on" data-testid="last-seen">1[23] s ago', live_row)
    # and the task failures
    assert "telemetry.tasks.aggregate_events" in page and "OperationalError" in page


def test_status_page__htmx_refresh__only_the_status_fragment(client: Any, people: dict[str, Any]) -> None:
    every_queue_live()
    client.force_login(people["admin"])
    response = client.get("/system/", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b'id="system-status"' in response.content and b"<html" not in response.content
    assert b'hx-trigger="every 10s"' in response.content


def test_status_page__queries__do_not_grow_with_workers(client: Any, people: dict[str, Any],
                                                       django_assert_max_num_queries: Any) -> None:
    client.force_login(people["admin"])
    heartbeat("w0@host", list(QUEUES))
    with CaptureQueriesContext(connection) as few:
        assert client.get("/system/").status_code == 200
    for n in range(1, 25):
        heartbeat(f"w{n}@host", [list(QUEUES)[n % 4]], seconds_ago=n * 10)
        task_failure_record(task_name=f"tasks.t{n}", error="E")
    with CaptureQueriesContext(connection) as many:
        assert client.get("/system/").status_code == 200
    assert len(many) == len(few)
    with django_assert_max_num_queries(12):
        client.get("/system/")


def test_navigation__queue_without_live_worker__admins_warned_others_not(client: Any, people: dict[str, Any]) -> None:
    # Given every queue but safety has a live worker
    heartbeat("main@host-a", ["telemetry", "notifications", "reminders"])
    # Then a project admin sees the warning on any page, linking to the status page
    client.force_login(people["admin"])
    page = client.get("/").content.decode()
    assert 'id="nav-system-status" href="/system/"' in page
    assert 'data-testid="nav-worker-warning" title="No live worker for: safety">1 queue without a worker' in page
    # and people who may not see the status page see neither link nor warning
    for name in ("operator", "viewer"):
        client.force_login(people[name])
        assert "nav-system-status" not in client.get("/").content.decode(), name
    # When safety's worker reports, the warning goes, the link stays
    heartbeat("safety@host-b", ["safety"])
    client.force_login(people["staff"])
    page = client.get("/").content.decode()
    assert "nav-system-status" in page and "nav-worker-warning" not in page


# --- services ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_heartbeat__same_worker_again__one_row_updated() -> None:
    heartbeat("w@host", ["safety"], seconds_ago=60, stopped=True)
    heartbeat("w@host", ["safety", "telemetry"])
    row = WorkerHeartbeat.objects.get()
    assert row.queues == ["safety", "telemetry"] and row.stopped_at is None
    assert (timezone.now() - row.last_seen).total_seconds() < 5


@pytest.mark.django_db
def test_task_failure_record__twice__one_row_counting_two() -> None:
    task_failure_record(task_name="rollouts.tasks.check_guardrails", error="KeyError")
    task_failure_record(task_name="rollouts.tasks.check_guardrails", error="ValueError")
    row = TaskFailureCount.objects.get()
    assert (row.failures, row.last_error) == (2, "ValueError")


# --- JSON logs ---------------------------------------------------------------------------------


def test_json_formatter__record_in_a_request_with_an_exception__one_json_object() -> None:
    # Given the production formatter and a record logged inside a request's audit context
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    logger = logging.getLogger("tests.operability.json")
    logger.addHandler(handler)
    logger.propagate = False
    # (its own level: an in-process test worker earlier in the run may have raised the root's)
    logger.setLevel(logging.INFO)
    try:
        with audit_context(request_ip="192.0.2.1") as context:
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("snapshot %s failed", "production", extra={"environment_id": 7})
        logger.warning("outside a request")
    finally:
        logger.removeHandler(handler)
    # Then each line is one JSON object with the fields a log collector indexes
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert list(first)[:4] == ["timestamp", "level", "logger", "message"]
    assert first["level"] == "ERROR" and first["logger"] == "tests.operability.json"
    assert first["message"] == "snapshot production failed" and first["environment_id"] == 7
    assert first["request_id"] == str(context.correlation_id)
    assert "ValueError: boom" in first["exception"] and "Traceback" in first["exception"]
    assert datetime.datetime.fromisoformat(first["timestamp"]).utcoffset() == datetime.timedelta(0)
    assert "request_id" not in second and "exception" not in second


@pytest.mark.parametrize(("env", "json_expected"), [({"DEBUG": "0"}, True), ({"DEBUG": "1"}, False),
                                                    ({"DEBUG": "1", "LOG_FORMAT": "json"}, True),
                                                    ({"DEBUG": "0", "LOG_FORMAT": "text"}, False)])
def test_logs__real_process__json_without_debug_text_with_it(env: dict[str, str], json_expected: bool) -> None:
    # Given a fresh process configured like a deployment (or a developer's machine)
    code = ("import django, logging; django.setup(); "
            "logging.getLogger('featureops.test').warning('disk %s is full', 'var')")
    full_env = {key: value for key, value in os.environ.items() if key not in {"DEBUG", "LOG_FORMAT"}}
    full_env.update({"SECRET_KEY": "x" * 50, "DJANGO_SETTINGS_MODULE": "featureops_site.settings", **env})
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    if json_expected:
        record = json.loads(line)
        assert (record["level"], record["logger"], record["message"]) == ("WARNING", "featureops.test", "disk var is full")
    else:
        assert line.endswith("WARNING featureops.test: disk var is full")
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_settings__unknown_log_format__refused_at_start() -> None:
    env = {**os.environ, "DEBUG": "1", "LOG_FORMAT": "xml"}
    result = subprocess.run([sys.executable, "-c", "import featureops_site.settings"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "LOG_FORMAT must be json or text" in result.stderr


def test_readyz__no_project_yet__snapshots_ready_with_zero_environments(db: None) -> None:
    every_queue_live()
    answer = wsgi("GET", "/readyz")
    assert answer.status == 200 and answer.json()["checks"]["snapshots"]["detail"] == "0 environments loaded"
