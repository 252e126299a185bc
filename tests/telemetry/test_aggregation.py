"""Incremental aggregation: exposures, distinct units, fallback rate, outcomes joined to
exposures through the unit key, p95 from merged histograms; idempotent re-runs, chunk
boundaries, overlapping runs, late-committing ingest transactions, and a real worker."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import OperationalError
from django.utils import timezone

from featureops_site.celery import app as celery_app
from telemetry import histogram, ingest
from telemetry.constants import CURSOR_NAME
from telemetry.models import AggregationCursor, ExposureBucket, OutcomeBucket, UnitExposure
from telemetry.selectors import evidence, series
from telemetry.services import events_aggregate
from telemetry.tasks import aggregate_events
from tests.concurrency import transaction_held_open
from tests.conftest import missing_service
from tests.telemetry.conftest import PROFILE, TOOL_MODE, environment_id, exposure, flag_id, outcome

pytestmark = pytest.mark.django_db
Post = Callable[..., Any]
BASE = (timezone.now() - datetime.timedelta(minutes=30)).replace(second=0, microsecond=0)
METRICS = ["latency_p95", "resolved_without_escalation", "incident_signal"]


def at(minutes: float) -> str:
    return (BASE + datetime.timedelta(minutes=minutes)).isoformat()


def window() -> dict[str, Any]:
    return {"flag_id": flag_id(), "environment_id": environment_id(), "start": BASE,
            "end": BASE + datetime.timedelta(hours=1)}


def scenario(post: Post) -> None:
    """Two baseline units (one exposed twice), two candidate units (one served the baseline
    after a timeout), and outcomes attributed by unit, by explicit variant, or not at all."""
    response = post([
        exposure("a1", "baseline_v3", time=at(0)),
        exposure("a2", "baseline_v3", time=at(0.5)),
        exposure("a2", "baseline_v3", time=at(1.5)),
        exposure("c1", "citation_first_v4", served="baseline_v3", time=at(1)),
        exposure("c2", "citation_first_v4", time=at(1)),
        exposure("c2", "read_only", flag=TOOL_MODE, time=at(1)),
        outcome("a1", "latency_p95", 100, time=at(2)),
        outcome("c1", "latency_p95", 200, time=at(2)),
        outcome("c2", "latency_p95", 300, flag=PROFILE, variant="citation_first_v4", time=at(3)),
        outcome("a2", "resolved_without_escalation", 1, time=at(2)),
        outcome("a1", "resolved_without_escalation", 0, time=at(2)),
        outcome("a1", "incident_signal", 1, flag=PROFILE, time=at(4)),
        outcome("ghost", "latency_p95", 5000, time=at(2)),  # never exposed: no variant to count for
        outcome("c1", "latency_p95", 9000, time=at(0)),  # before c1's first exposure: not counted
    ])
    assert response.json()["accepted"] == 14


def test_evidence__exposures_units_fallbacks_and_outcomes_per_variant(post: Post) -> None:
    # Given the scenario's events, aggregated
    scenario(post)
    assert events_aggregate() == 14
    # When the evidence over the hour is read
    result = evidence(**window(), metric_keys=METRICS)
    # Then each variant has its exposures, distinct units and fallback rate
    baseline, candidate = result["baseline_v3"], result["citation_first_v4"]
    assert (baseline["exposures"], baseline["units"], baseline["fallback_rate"]) == (3, 2, 0.0)
    assert (candidate["exposures"], candidate["units"], candidate["fallback_rate"]) == (2, 2, 0.5)
    # and the outcomes joined through the unit key (or the event's own variant)
    assert baseline["metrics"]["latency_p95"]["count"] == 1
    assert baseline["metrics"]["latency_p95"]["p95"] == pytest.approx(100, rel=histogram.RELATIVE_ERROR)
    assert candidate["metrics"]["latency_p95"]["count"] == 2
    assert candidate["metrics"]["latency_p95"]["mean"] == 250
    assert baseline["metrics"]["resolved_without_escalation"]["mean"] == 0.5
    assert baseline["metrics"]["incident_signal"]["count"] == 1
    assert baseline["metrics"]["incident_signal"]["rate"] == pytest.approx(1 / 3)
    assert candidate["metrics"]["resolved_without_escalation"] == {"count": 0, "sum": 0.0, "mean": None,
                                                                   "rate": 0.0, "p95": None, "variance": None}
    # the variance of the outcome values, and a p95 metric's merged histogram
    assert candidate["metrics"]["latency_p95"]["variance"] == pytest.approx(50 ** 2)  # 200 and 300
    assert sum(candidate["metrics"]["latency_p95"]["histogram"].values()) == 2
    # An outcome naming its flag counts for that flag only; one without counts for every flag
    # the unit was exposed to
    tool_mode_window = {**window(), "flag_id": flag_id(TOOL_MODE)}
    assert evidence(**tool_mode_window, metric_keys=["latency_p95"])["read_only"]["metrics"]["latency_p95"][
        "count"] == 0
    post([outcome("c2", "incident_signal", 1, time=at(5))])
    events_aggregate()
    assert evidence(**tool_mode_window, metric_keys=["incident_signal"])["read_only"]["metrics"][
        "incident_signal"]["count"] == 1
    assert evidence(**window(), metric_keys=["incident_signal"])["citation_first_v4"]["metrics"][
        "incident_signal"]["count"] == 1


def test_evidence__window_excludes_other_times_and_environments(post: Post, keys: dict[str, str]) -> None:
    scenario(post)
    post([exposure("d1", "baseline_v3", time=at(0))], key=keys["development"])
    events_aggregate()
    # Given a window of the first minute only
    early = evidence(**{**window(), "end": BASE + datetime.timedelta(minutes=1)}, metric_keys=[])
    # Then only that minute's exposures of production count
    assert early["baseline_v3"]["exposures"] == 2 and early["baseline_v3"]["units"] == 2
    assert "citation_first_v4" not in early


def test_rerun__nothing_new__same_aggregates(post: Post) -> None:
    # Given the scenario aggregated once
    scenario(post)
    events_aggregate()
    before = evidence(**window(), metric_keys=METRICS)
    # When aggregation runs again
    again = events_aggregate()
    # Then it finds nothing and the aggregates are unchanged
    assert again == 0
    assert evidence(**window(), metric_keys=METRICS) == before


def test_incremental__in_small_chunks_and_across_runs__same_as_one_pass(post: Post) -> None:
    # Given the scenario aggregated three events at a time, then more events aggregated later
    scenario(post)
    assert events_aggregate(chunk_size=3) == 14
    post([exposure("a1", "baseline_v3", time=at(5)), exposure("c3", "citation_first_v4", time=at(5)),
          outcome("c3", "latency_p95", 400, time=at(6))])
    assert events_aggregate(chunk_size=2) == 3
    # Then the result is what one pass over everything gives
    result = evidence(**window(), metric_keys=METRICS)
    assert (result["baseline_v3"]["exposures"], result["baseline_v3"]["units"]) == (4, 2)
    assert (result["citation_first_v4"]["exposures"], result["citation_first_v4"]["units"]) == (3, 3)
    assert result["citation_first_v4"]["metrics"]["latency_p95"]["mean"] == 300
    assert UnitExposure.objects.get(unit="a1", variant="baseline_v3").last_seen == BASE + datetime.timedelta(minutes=5)
    cursor = AggregationCursor.objects.get(name=CURSOR_NAME)
    assert cursor.events_processed == 17


def test_p95__thousand_latencies__within_a_bins_error(post: Post) -> None:
    # Given 1,000 candidate latencies 1..1000 ms spread over several minutes, 50 of them slow
    post([exposure("c1", "citation_first_v4", time=at(0))])
    values = list(range(1, 1001))
    for start in range(0, 1000, 500):
        post([outcome("c1", "latency_p95", v, time=at(1 + (v % 7))) for v in values[start:start + 500]])
    events_aggregate()
    # When evidence merges the per-minute histograms
    p95 = evidence(**window(), metric_keys=["latency_p95"])["citation_first_v4"]["metrics"]["latency_p95"]["p95"]
    # Then p95 is the true 950 ms within one bin's relative error
    assert abs(p95 - 950) / 950 <= histogram.RELATIVE_ERROR


def test_series__values_per_bucket_and_variant(post: Post) -> None:
    scenario(post)
    post([exposure("c3", "citation_first_v4", time=at(0)), outcome("c3", "latency_p95", 500, time=at(12))])
    events_aggregate()
    # When the p95 latency series is read in 10-minute buckets
    points = series(**{k: v for k, v in window().items()}, metric_key="latency_p95", bucket_minutes=10)
    # Then each bucket and variant has its value and sample size, oldest first
    rounded = [(p["bucket"] - BASE, p["variant"], p["count"], round(p["value"], -1)) for p in points]
    assert rounded == [(datetime.timedelta(0), "baseline_v3", 1, 100.0),
                       (datetime.timedelta(0), "citation_first_v4", 2, 300.0),
                       (datetime.timedelta(minutes=10), "citation_first_v4", 1, 500.0)]
    mean = series(**window(), metric_key="resolved_without_escalation", bucket_minutes=60)
    assert [(p["variant"], p["value"], p["count"]) for p in mean] == [("baseline_v3", 0.5, 2)]
    assert series(**window(), metric_key="no_such_metric", bucket_minutes=5) == []


def test_selectors__fixed_number_of_queries(post: Post, django_assert_num_queries: Any) -> None:
    scenario(post)
    events_aggregate()
    span = window()
    with django_assert_num_queries(4):
        evidence(**span, metric_keys=METRICS)
    with django_assert_num_queries(2):
        series(**span, metric_key="latency_p95", bucket_minutes=1)


def test_task__eager__aggregates_and_beat_declares_it(post: Post, eager_celery: None) -> None:
    scenario(post)
    assert aggregate_events.delay().get() == 14
    assert ExposureBucket.objects.exists() and OutcomeBucket.objects.exists()
    schedule = celery_app.conf.beat_schedule["aggregate-telemetry"]
    assert schedule["task"] == aggregate_events.name and schedule["schedule"].total_seconds() == 10


def test_histogram__bins_merge_and_percentiles() -> None:
    first, second = {}, {}
    for value in (-5, 0, 0.5, 1, 2):
        histogram.add(first, value)
    histogram.add(second, 1000, count=3)
    merged = histogram.merge((first, second))
    assert sum(merged.values()) == 8
    assert histogram.percentile(merged, 0.01) == pytest.approx(-5, rel=histogram.RELATIVE_ERROR)
    assert histogram.percentile(merged, 0.25) == 0.0
    assert histogram.percentile(merged, 1.0) == pytest.approx(1000, rel=histogram.RELATIVE_ERROR)
    assert histogram.percentile({}, 0.95) is None


# --- concurrency (PostgreSQL) --------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_overlapping_runs__second_skips_while_first_holds_the_cursor(post: Post) -> None:
    # Given events, and another run holding the cursor's lock
    scenario(post)
    assert events_aggregate(chunk_size=1, budget_seconds=0) == 1  # creates the cursor row; one chunk
    with transaction_held_open(lambda: AggregationCursor.objects.select_for_update().get(name=CURSOR_NAME)):
        # When a second run starts meanwhile
        skipped = events_aggregate()
    # Then it returns at once without counting, and a later run counts everything once
    assert skipped == 0
    assert events_aggregate() == 13
    assert evidence(**window(), metric_keys=[])["baseline_v3"]["exposures"] == 3


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_late_commit__ingest_committing_after_a_newer_batch__still_counted_once(post: Post) -> None:
    # Given an ingest transaction that has written its events but not yet committed
    def slow_ingest() -> None:
        ingest.store_batch(environment_id=environment_id(), batch_id="slow", now=timezone.now(), rejected=[],
                           rows=[("exposure", flag_id(), "baseline_v3", "baseline_v3", None, None, "slow-unit", BASE)])

    with transaction_held_open(slow_ingest):
        # When a later batch commits first and aggregation runs
        post([exposure("fast-unit", "baseline_v3", time=at(0))])
        first_run = events_aggregate()
    second_run = events_aggregate()
    # Then the first run waited for the older transaction instead of passing its rows by (the
    # newer batch waits with it), and the next run counted both, once
    assert (first_run, second_run) == (0, 2)
    assert evidence(**window(), metric_keys=[])["baseline_v3"]["exposures"] == 2


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_aggregate_task__real_worker_and_broker__aggregates_in_database(post: Post) -> None:
    from celery.contrib.testing.worker import start_worker

    try:
        with celery_app.connection_for_write() as broker:
            broker.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker means it is absent
        missing_service(f"the Celery broker {celery_app.conf.broker_url} is unreachable: {exc}")
    # Given ingested events
    scenario(post)
    # When the task is sent through the broker to a real worker (a queue of its own)
    queue = f"test-telemetry-{uuid.uuid4().hex[:12]}"
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=[queue]):
        aggregate_events.apply_async(queue=queue)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if AggregationCursor.objects.filter(name=CURSOR_NAME, events_processed=14).exists():
                    break
            except OperationalError:  # SQLite's shared in-memory test database: the worker holds the table
                pass
            time.sleep(0.2)
    # Then the worker folded every event into the aggregates
    assert AggregationCursor.objects.get(name=CURSOR_NAME).events_processed == 14
    assert evidence(**window(), metric_keys=["latency_p95"])["citation_first_v4"]["fallback_rate"] == 0.5
