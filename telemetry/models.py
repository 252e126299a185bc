"""Telemetry: the metrics registry, raw exposure and outcome events, and their aggregates.

Raw events and aggregates keep `environment_id`, `flag_id` and `metric_id` as plain integers
(no foreign-key constraint): inserting thousands of rows a second pays no constraint check,
and deleting a flag never has to scan millions of events. Only `Metric` and `EventBatch`
are ordinary related rows.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from flags.constants import KEY_ERROR, KEY_HELP, KEY_PATTERN
from flags.models import Environment, Project, key_validator
from telemetry.constants import MAX_BATCH_ID_LENGTH, EventKind, MetricKind


class Metric(models.Model):
    """A metric the application reports outcome events for, e.g. `latency_p95`."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="metrics")
    key = models.CharField(max_length=100, validators=[key_validator], help_text=KEY_HELP)
    name = models.CharField(max_length=200)
    unit = models.CharField(max_length=50, blank=True, help_text="ms, USD, %, … (blank for plain numbers)")
    kind = models.CharField(max_length=10, choices=MetricKind.choices)
    higher_is_better = models.BooleanField()
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        constraints = [
            models.UniqueConstraint(fields=["project", "key"], name="metric_key_unique_per_project"),
            models.CheckConstraint(condition=Q(key__regex=KEY_PATTERN), name="metric_key_is_slug",
                                   violation_error_message=KEY_ERROR),
            models.CheckConstraint(condition=Q(kind__in=MetricKind.values), name="metric_kind_known"),
        ]

    def __str__(self) -> str:
        return self.key


class EventBatch(models.Model):
    """One accepted POST, by its idempotency key: a retry finds this row and answers its counts."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    batch_id = models.CharField(max_length=MAX_BATCH_ID_LENGTH)
    accepted = models.PositiveIntegerField()
    rejected = models.JSONField(default=list)  # [{"index", "errors"}], as first answered
    received_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["environment", "batch_id"], name="event_batch_once")]

    def __str__(self) -> str:
        return f"batch {self.batch_id}"



class Event(models.Model):
    """A raw exposure or outcome event, as received. Written only by `telemetry.ingest`.

    `txid` is the inserting transaction's id on PostgreSQL (0 elsewhere). Aggregation reads
    events in (txid, id) order and only from transactions older than every running one, so an
    insert that commits late can never slip under the watermark.
    """

    id = models.BigAutoField(primary_key=True)
    txid = models.BigIntegerField(default=0)
    environment_id = models.IntegerField()
    kind = models.CharField(max_length=10, choices=EventKind.choices)
    flag_id = models.IntegerField(null=True)  # exposure; optional on outcomes
    variant = models.CharField(max_length=100, blank=True)  # assigned (exposure); optional on outcomes
    served = models.CharField(max_length=100, blank=True)  # exposure only: what was actually served
    metric_id = models.IntegerField(null=True)  # outcome only
    value = models.FloatField(null=True)  # outcome only
    unit = models.CharField(max_length=200)  # the assignment unit key
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["txid", "id"], name="event_aggregation_order")]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"



class AggregationCursor(models.Model):
    """How far aggregation has read, as a (txid, id) watermark. Its row lock serialises runs."""

    name = models.CharField(max_length=50, primary_key=True)
    last_txid = models.BigIntegerField(default=0)
    last_id = models.BigIntegerField(default=0)
    events_processed = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"{self.name} at ({self.last_txid}, {self.last_id})"



class UnitExposure(models.Model):
    """First and last exposure of one assignment unit to one variant of a flag.

    The distinct-units table: `units` in evidence is the number of these rows whose
    `first_seen` falls in the window (units first exposed to the variant then). It is also
    how outcomes find the variant a unit was assigned.
    """

    id = models.BigAutoField(primary_key=True)
    flag_id = models.IntegerField()
    environment_id = models.IntegerField()
    variant = models.CharField(max_length=100)
    unit = models.CharField(max_length=200)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["flag_id", "environment_id", "variant", "unit"],
                                               name="unit_exposure_once")]
        indexes = [
            models.Index(fields=["environment_id", "unit"], name="unit_exposure_by_unit"),
            models.Index(fields=["flag_id", "environment_id", "first_seen"], name="unit_exposure_first_seen"),
        ]

    def __str__(self) -> str:
        return f"{self.unit} → {self.variant}"



class ExposureBucket(models.Model):
    """Exposures of one variant in one minute; `fallbacks` counts those where served ≠ assigned."""

    id = models.BigAutoField(primary_key=True)
    flag_id = models.IntegerField()
    environment_id = models.IntegerField()
    variant = models.CharField(max_length=100)
    bucket = models.DateTimeField()  # the minute's start, UTC
    exposures = models.BigIntegerField(default=0)
    fallbacks = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["flag_id", "environment_id", "bucket", "variant"],
                                               name="exposure_bucket_once")]

    def __str__(self) -> str:
        return f"{self.variant} @ {self.bucket:%Y-%m-%d %H:%M}"



class OutcomeBucket(models.Model):
    """Outcome values of one metric attributed to one variant in one minute.

    `histogram` is sparse, {bin: count} over the fixed log-scale bins of `telemetry.histogram`,
    so buckets merge by adding counts and any window's p95 comes from the merged bins.
    """

    id = models.BigAutoField(primary_key=True)
    flag_id = models.IntegerField()
    environment_id = models.IntegerField()
    variant = models.CharField(max_length=100)
    metric_id = models.IntegerField()
    bucket = models.DateTimeField()
    count = models.BigIntegerField(default=0)
    total = models.FloatField(default=0.0)
    total_squares = models.FloatField(default=0.0)  # the sum of the values' squares: their variance, exactly
    histogram = models.JSONField(default=dict)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["flag_id", "environment_id", "metric_id", "bucket", "variant"],
                                               name="outcome_bucket_once")]

    def __str__(self) -> str:
        return f"{self.variant} metric {self.metric_id} @ {self.bucket:%Y-%m-%d %H:%M}"



class ExposureRollup(models.Model):
    """Shape of the hourly and daily roll-ups of `ExposureBucket`, kept by the same aggregation
    transaction as the minutes, so long windows read a row per hour or day instead of sixty
    or 1,440.

    `units` counts the `UnitExposure` rows whose `first_seen` falls in the period (moved when
    a late event makes a unit's first exposure earlier), so whole periods of distinct units
    are summed here instead of counted row by row.
    """

    id = models.BigAutoField(primary_key=True)
    flag_id = models.IntegerField()
    environment_id = models.IntegerField()
    variant = models.CharField(max_length=100)
    bucket = models.DateTimeField()  # the period's start, UTC
    exposures = models.BigIntegerField(default=0)
    fallbacks = models.BigIntegerField(default=0)
    units = models.BigIntegerField(default=0)

    class Meta:
        abstract = True
        constraints = [models.UniqueConstraint(fields=["flag_id", "environment_id", "bucket", "variant"],
                                               name="%(class)s_once")]

    def __str__(self) -> str:
        return f"{self.variant} @ {self.bucket:%Y-%m-%d %H:%M}"



class HourlyExposureBucket(ExposureRollup):
    """Exposures of one variant in one hour (`bucket` = the hour's start, UTC)."""



class DailyExposureBucket(ExposureRollup):
    """Exposures of one variant in one UTC day (`bucket` = its midnight)."""



class OutcomeRollup(models.Model):
    """Shape of the hourly and daily roll-ups of `OutcomeBucket`: counts and totals added,
    histograms merged."""

    id = models.BigAutoField(primary_key=True)
    flag_id = models.IntegerField()
    environment_id = models.IntegerField()
    variant = models.CharField(max_length=100)
    metric_id = models.IntegerField()
    bucket = models.DateTimeField()  # the period's start, UTC
    count = models.BigIntegerField(default=0)
    total = models.FloatField(default=0.0)
    total_squares = models.FloatField(default=0.0)  # the sum of the values' squares: their variance, exactly
    histogram = models.JSONField(default=dict)

    class Meta:
        abstract = True
        constraints = [models.UniqueConstraint(fields=["flag_id", "environment_id", "metric_id", "bucket", "variant"],
                                               name="%(class)s_once")]

    def __str__(self) -> str:
        return f"{self.variant} metric {self.metric_id} @ {self.bucket:%Y-%m-%d %H:%M}"



class HourlyOutcomeBucket(OutcomeRollup):
    """Outcomes of one metric attributed to one variant in one hour."""



class DailyOutcomeBucket(OutcomeRollup):
    """Outcomes of one metric attributed to one variant in one UTC day."""
