"""Writes of the site's operational rows: worker heartbeats and task failure counts.

No audit rows: these describe the machines running the console, not release decisions
(see featureops_site/models.py). Each write is one statement, safe to repeat.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from featureops_site.models import TaskFailureCount, WorkerHeartbeat

# A worker silent this long is forgotten (its row deleted when any worker starts): long enough to
# read what happened after a weekend, short enough that renamed or retired workers go away.
FORGET_WORKERS_AFTER = datetime.timedelta(days=7)


def worker_heartbeat_record(*, hostname: str, queues: Iterable[str], pid: int, started_at: datetime.datetime,
                            now: datetime.datetime | None = None) -> None:
    """Upsert the worker's row: one INSERT … ON CONFLICT (hostname) DO UPDATE."""
    heartbeat = WorkerHeartbeat(hostname=hostname, queues=sorted(set(queues)), pid=pid, started_at=started_at,
                                last_seen=now or timezone.now(), stopped_at=None)
    heartbeat.full_clean(validate_unique=False, validate_constraints=False)  # the upsert is the unique check
    WorkerHeartbeat.objects.bulk_create(
        [heartbeat], update_conflicts=True, unique_fields=["hostname"],
        update_fields=["queues", "pid", "started_at", "last_seen", "stopped_at"])


def worker_stopped_record(*, hostname: str, pid: int, now: datetime.datetime | None = None) -> int:
    """Mark a worker stopped (warm shutdown). Only this process's row: a worker of the same name
    already started elsewhere keeps its own."""
    return WorkerHeartbeat.objects.filter(hostname=hostname, pid=pid).update(stopped_at=now or timezone.now())


def worker_heartbeats_forget(*, now: datetime.datetime | None = None) -> int:
    """Delete the rows of workers silent for FORGET_WORKERS_AFTER."""
    cutoff = (now or timezone.now()) - FORGET_WORKERS_AFTER
    return WorkerHeartbeat.objects.filter(last_seen__lt=cutoff).delete()[0]


def task_failure_record(*, task_name: str, error: str, now: datetime.datetime | None = None) -> None:
    """Count one failure of `task_name`: an atomic increment, or the first row."""
    now = now or timezone.now()
    error = error[:255]
    with transaction.atomic():  # a savepoint when called inside a caller's transaction
        counted = TaskFailureCount.objects.filter(task=task_name).update(
            failures=F("failures") + 1, last_failed_at=now, last_error=error)
        if counted:
            return
        try:
            with transaction.atomic():
                TaskFailureCount.objects.create(task=task_name, failures=1, last_failed_at=now, last_error=error)
        except IntegrityError:  # another worker counted the first failure meanwhile
            TaskFailureCount.objects.filter(task=task_name).update(
                failures=F("failures") + 1, last_failed_at=now, last_error=error)
