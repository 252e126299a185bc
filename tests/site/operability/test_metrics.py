"""/metrics (issue 15, item 6): who may scrape it (loopback, allowed networks, a bearer token),
and what it reports: OFREP requests, events ingested, aggregation lag, workers and task
failures, snapshot age, queue depths from the broker; through the real WSGI application."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from django.utils import timezone

from featureops_site.celery import app as celery_app
from featureops_site.models import TaskFailureCount
from featureops_site.services import task_failure_record
from flags.models import Environment
from flags.snapshot_store import get_store
from telemetry.models import Event
from telemetry.services import events_aggregate
from tests.ops_client import metric, wsgi
from tests.servers import ROOT
from tests.site.operability.support import heartbeat, scrape
from tests.workers import delete_queues, require_broker, unique_prefix

PROFILE = "support_assistant_profile"


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
