"""Reads for operability: workers and their queues, queue depths, task failures, aggregation lag.

Shared by /readyz (featureops_site/health.py), /metrics (metrics.py) and the System status page
(status_views.py). Each read is one query (or one broker connection), whatever the number of
workers or queues.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.utils import timezone

from featureops_site.celery import app as celery_app
from featureops_site.models import TaskFailureCount, WorkerHeartbeat
from featureops_site.queues import QUEUES
from telemetry.constants import CURSOR_NAME
from telemetry.models import AggregationCursor, Event

logger = logging.getLogger(__name__)

BROKER_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class WorkerStatus:
    hostname: str
    queues: tuple[str, ...]
    pid: int
    started_at: datetime.datetime
    last_seen: datetime.datetime
    stopped_at: datetime.datetime | None
    seconds_since_seen: float

    @property
    def state(self) -> str:
        """"live", "stale" (silent for WORKER_STALE_SECONDS: killed, hung, or cut off) or "stopped"."""
        if self.stopped_at is not None:
            return "stopped"
        return "live" if self.seconds_since_seen <= settings.WORKER_STALE_SECONDS else "stale"

    @property
    def live(self) -> bool:
        return self.state == "live"


@dataclass(frozen=True)
class QueueStatus:
    name: str  # as in featureops_site.queues
    broker_name: str  # with CELERY_QUEUE_PREFIX
    depth: int | None  # messages waiting; None when the broker was not asked or did not answer
    workers: tuple[WorkerStatus, ...]

    @property
    def live_workers(self) -> tuple[WorkerStatus, ...]:
        return tuple(worker for worker in self.workers if worker.live)

    @property
    def last_seen(self) -> datetime.datetime | None:
        return max((worker.last_seen for worker in self.workers), default=None)


def worker_statuses(*, now: datetime.datetime | None = None) -> list[WorkerStatus]:
    """Every worker that has reported in the last week (older rows are forgotten): one query."""
    now = now or timezone.now()
    return [WorkerStatus(hostname=row.hostname, queues=tuple(row.queues), pid=row.pid, started_at=row.started_at,
                         last_seen=row.last_seen, stopped_at=row.stopped_at,
                         seconds_since_seen=max(0.0, (now - row.last_seen).total_seconds()))
            for row in WorkerHeartbeat.objects.order_by("hostname")]


def queue_statuses(workers: Iterable[WorkerStatus], depths: dict[str, int] | None = None) -> list[QueueStatus]:
    """Each of our queues with the workers that consume it (from the rows already read)."""
    workers = list(workers)
    prefix = settings.CELERY_QUEUE_PREFIX
    return [QueueStatus(name=queue, broker_name=f"{prefix}{queue}", depth=(depths or {}).get(queue),
                        workers=tuple(worker for worker in workers if queue in worker.queues))
            for queue in QUEUES]


def queues_without_live_worker(*, now: datetime.datetime | None = None) -> list[str]:
    """The queues no live worker consumes (for the navigation's warning): one query."""
    return [queue.name for queue in queue_statuses(worker_statuses(now=now)) if not queue.live_workers]


def queue_depths(queues: Iterable[str] = tuple(QUEUES)) -> dict[str, int] | None:
    """Messages waiting in each queue, asked of the broker (passive declares, nothing created);
    None when the broker cannot be reached within BROKER_TIMEOUT_SECONDS."""
    prefix = settings.CELERY_QUEUE_PREFIX
    depths: dict[str, int] = {}
    try:
        with celery_app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_SECONDS)
            channel = conn.default_channel
            for queue in queues:
                try:
                    depths[queue] = channel.queue_declare(f"{prefix}{queue}", passive=True).message_count
                except conn.channel_errors:
                    # NOT_FOUND: no worker declared it and no message waits (Redis keeps no empty lists).
                    depths[queue] = 0
    except Exception as exc:  # noqa: BLE001 - an unreachable broker is reported, never raised to a scrape or a page
        logger.warning("queue depths unavailable, the broker did not answer: %s: %s", type(exc).__name__, exc)
        return None
    return depths


def task_failure_counts() -> list[TaskFailureCount]:
    return list(TaskFailureCount.objects.order_by("task"))


# The next event aggregation will read: the first past the cursor's (txid, id) watermark, in the
# order of the `event_aggregation_order` index. The watermark comes from two scalar subqueries
# evaluated once (PostgreSQL InitPlans), so the row comparison is an index range, not a scan of
# the events already aggregated. A missing cursor (never aggregated) is the watermark (0, 0).
_NEXT_PENDING_EVENT_SQL = """
SELECT e.received_at FROM {events} e
WHERE (e.txid, e.id) > (
    COALESCE((SELECT c.last_txid FROM {cursors} c WHERE c.name = %s), 0),
    COALESCE((SELECT c.last_id FROM {cursors} c WHERE c.name = %s), 0))
ORDER BY e.txid, e.id
LIMIT 1
"""


def aggregation_lag_seconds(*, now: datetime.datetime | None = None) -> float:
    """Seconds since the oldest event still waiting for aggregation was received; 0 when caught up."""
    sql = _NEXT_PENDING_EVENT_SQL.format(events=Event._meta.db_table, cursors=AggregationCursor._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(sql, [CURSOR_NAME, CURSOR_NAME])
        row = cursor.fetchone()
    if row is None:
        return 0.0
    received_at = row[0]
    if isinstance(received_at, str):  # SQLite hands back text
        received_at = datetime.datetime.fromisoformat(received_at)
    if timezone.is_naive(received_at):
        received_at = timezone.make_aware(received_at, datetime.UTC)
    return max(0.0, ((now or timezone.now()) - received_at).total_seconds())
