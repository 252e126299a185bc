"""Limits of the events API and the shape of the aggregates."""

from __future__ import annotations

import datetime

from django.db import models

MAX_EVENTS_PER_BATCH = 1_000
MAX_BODY_BYTES = 1024 * 1024  # settings.TELEMETRY_MAX_BODY_BYTES overrides
MAX_BATCH_ID_LENGTH = 100
MAX_KEY_LENGTH = 100  # variants, served routes
MAX_UNIT_LENGTH = 200
MAX_PAST = datetime.timedelta(days=7)
MAX_FUTURE = datetime.timedelta(minutes=5)
BUCKET = datetime.timedelta(minutes=1)
# Raw events read per aggregation transaction, and how long one run may keep going.
AGGREGATION_CHUNK = 20_000
AGGREGATION_BUDGET_SECONDS = 8.0
CURSOR_NAME = "events"
# Pruning of raw events (settings.TELEMETRY_RAW_RETENTION_HOURS): rows deleted per statement,
# and how long one run may keep going.
PRUNE_BATCH = 10_000
PRUNE_BUDGET_SECONDS = 20.0


class EventKind(models.TextChoices):
    EXPOSURE = "exposure", "Exposure"
    OUTCOME = "outcome", "Outcome"


class MetricKind(models.TextChoices):
    COUNT = "count", "Count"
    RATE = "rate", "Rate"
    MEAN = "mean", "Mean"
    P95 = "p95", "95th percentile"
