"""Background jobs of the telemetry app (the beat schedule is in settings)."""

from __future__ import annotations

from celery import shared_task

from telemetry import services


@shared_task
def aggregate_events() -> int:
    """Every 10 s: fold new raw events into the aggregates. Overlapping runs are safe: the
    second finds the cursor locked and returns 0."""
    return services.events_aggregate()
