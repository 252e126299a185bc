"""Retention of raw events (issue 15, item 5): a beat job deletes raw events older than
TELEMETRY_RAW_RETENTION_HOURS that aggregation has already read, in bounded batches; the
aggregates and the evidence read from them stay as they were; an unaggregated event stays."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from featureops_site.celery import app as celery_app
from telemetry.models import (
    DailyExposureBucket,
    DailyOutcomeBucket,
    Event,
    ExposureBucket,
    HourlyExposureBucket,
    HourlyOutcomeBucket,
    OutcomeBucket,
    UnitExposure,
)
from telemetry.selectors import evidence
from telemetry.services import events_aggregate, raw_events_prune
from telemetry.tasks import prune_raw_events
from tests.telemetry.conftest import exposure, outcome
from tests.telemetry.test_aggregation import METRICS, scenario, window
from tests.workers import require_broker, start_worker, stop_worker, unique_prefix, worker_env

pytestmark = pytest.mark.django_db
Post = Callable[..., Any]
RETENTION = datetime.timedelta(hours=48)
AGGREGATE_MODELS = [ExposureBucket, OutcomeBucket, HourlyExposureBucket, HourlyOutcomeBucket, DailyExposureBucket,
                    DailyOutcomeBucket, UnitExposure]


def age_all_events(hours: float = 49) -> None:
    Event.objects.update(received_at=timezone.now() - datetime.timedelta(hours=hours))


def aggregates() -> dict[str, list[tuple]]:
    return {model.__name__: sorted(map(repr, model.objects.values_list())) for model in AGGREGATE_MODELS}


def test_prune__aggregated_and_old__deleted__aggregates_and_evidence_unchanged(post: Post) -> None:
    # Given the scenario's events, aggregated, received 49 hours ago
    scenario(post)
    assert events_aggregate() == 14
    age_all_events()
    before, tables = evidence(**window(), metric_keys=METRICS), aggregates()
    # When the raw events are pruned with a 48-hour retention
    result = raw_events_prune(retention=RETENTION)
    # Then every raw event is gone, and the aggregates and their evidence are as they were
    assert result == {"deleted": 14, "batches": 1}
    assert not Event.objects.exists()
    assert evidence(**window(), metric_keys=METRICS) == before
    assert aggregates() == tables
    # and a later aggregation run finds nothing new and changes nothing
    assert events_aggregate() == 0
    assert evidence(**window(), metric_keys=METRICS) == before


def test_prune__unaggregated_events_kept_however_old(post: Post) -> None:
    # Given aggregated events, then newer ones that aggregation has not read yet, all old
    scenario(post)
    assert events_aggregate() == 14
    assert post([exposure("late-1"), outcome("late-1", "latency_p95", 700)]).json()["accepted"] == 2
    age_all_events(hours=500)
    # When pruned
    assert raw_events_prune(retention=RETENTION)["deleted"] == 14
    # Then the two unaggregated events are kept, and aggregation still counts them
    assert sorted(Event.objects.values_list("unit", flat=True)) == ["late-1", "late-1"]
    assert events_aggregate() == 2
    assert raw_events_prune(retention=RETENTION)["deleted"] == 2


def test_prune__events_younger_than_the_retention_kept(post: Post) -> None:
    scenario(post)
    assert events_aggregate() == 14
    Event.objects.filter(unit="a1").update(received_at=timezone.now() - datetime.timedelta(hours=47))
    assert raw_events_prune(retention=RETENTION) == {"deleted": 0, "batches": 0}
    assert Event.objects.count() == 14


def test_prune__bounded_batches_and_time(post: Post, django_assert_max_num_queries: Any) -> None:
    scenario(post)
    assert events_aggregate() == 14
    age_all_events()
    # A run out of time stops after one batch of at most batch_size rows
    with django_assert_max_num_queries(4):
        assert raw_events_prune(retention=RETENTION, batch_size=5, budget_seconds=0) == {"deleted": 5, "batches": 1}
    assert Event.objects.count() == 9
    # The next run goes on, batch by batch, until caught up
    assert raw_events_prune(retention=RETENTION, batch_size=5) == {"deleted": 9, "batches": 2}
    assert not Event.objects.exists()


def test_prune__nothing_aggregated_yet__nothing_deleted(post: Post) -> None:
    scenario(post)
    age_all_events()
    assert raw_events_prune(retention=RETENTION) == {"deleted": 0, "batches": 0}
    assert Event.objects.count() == 14


@override_settings(TELEMETRY_RAW_RETENTION_HOURS=48)
def test_task__eager__prunes_with_the_setting_and_beat_declares_it(post: Post, eager_celery: None) -> None:
    scenario(post)
    assert events_aggregate() == 14
    age_all_events()
    assert prune_raw_events.delay().get() == {"deleted": 14, "batches": 1}
    schedule = celery_app.conf.beat_schedule["prune-raw-telemetry"]
    assert schedule["task"] == prune_raw_events.name and schedule["schedule"].total_seconds() == 600
    assert settings.TELEMETRY_RAW_RETENTION_HOURS == 48


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_prune__real_worker_with_beat__aggregates_then_prunes(post: Post, tmp_path: Any) -> None:
    require_broker()
    # Given committed events, not yet aggregated, received 49 hours ago
    scenario(post)
    age_all_events()
    prefix = unique_prefix("prune")
    env = worker_env(tmp_path, prefix, TELEMETRY_AGGREGATE_SECONDS="1", TELEMETRY_PRUNE_SECONDS="1")
    # When a worker with beat runs on the telemetry queue (aggregation and pruning every second)
    worker = start_worker(tmp_path, prefix, queues=["telemetry"], beat=True, concurrency=2, env=env,
                          loglevel="INFO")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and Event.objects.exists():
            time.sleep(0.3)
    finally:
        output = stop_worker(worker, prefix)
    # Then every raw event was aggregated first and then deleted
    assert not Event.objects.exists(), output[-3000:]
    result = evidence(**window(), metric_keys=METRICS)
    assert result["citation_first_v4"]["fallback_rate"] == 0.5, output[-3000:]
    assert "Pruned 14 raw telemetry events" in output
