"""Background jobs of the telemetry app (the beat schedule is in settings)."""

from __future__ import annotations

import datetime

from celery import shared_task
from django.conf import settings

from telemetry import services


@shared_task
def aggregate_events() -> int:
    """Every 10 s: fold new raw events into the aggregates. Overlapping runs are safe: the
    second finds the cursor locked and returns 0."""
    return services.events_aggregate()


@shared_task
def prune_raw_events() -> dict[str, int]:
    """Every 10 minutes: delete raw events older than TELEMETRY_RAW_RETENTION_HOURS that are
    already aggregated, in bounded batches (see services.raw_events_prune)."""
    return services.raw_events_prune(retention=datetime.timedelta(hours=settings.TELEMETRY_RAW_RETENTION_HOURS))
