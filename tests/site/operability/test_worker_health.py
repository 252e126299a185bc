"""The rows workers write: a heartbeat per worker, updated in place, and a failure count per task."""

from __future__ import annotations

import pytest
from django.utils import timezone

from featureops_site.models import TaskFailureCount, WorkerHeartbeat
from featureops_site.services import task_failure_record
from tests.site.operability.support import heartbeat


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
