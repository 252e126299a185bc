"""Writes of the telemetry app: the metrics registry (audited) and incremental aggregation."""

from __future__ import annotations

import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, record
from audit.validators import check_text_limit
from flags.models import Project
from telemetry import histogram
from telemetry.constants import (
    AGGREGATION_BUDGET_SECONDS,
    AGGREGATION_CHUNK,
    CURSOR_NAME,
    PRUNE_BATCH,
    PRUNE_BUDGET_SECONDS,
    EventKind,
    MetricKind,
)
from telemetry.models import (
    AggregationCursor,
    DailyExposureBucket,
    DailyOutcomeBucket,
    Event,
    ExposureBucket,
    ExposureRollup,
    HourlyExposureBucket,
    HourlyOutcomeBucket,
    Metric,
    OutcomeBucket,
    OutcomeRollup,
    UnitExposure,
)

logger = logging.getLogger(__name__)

METRIC_FIELDS = ("name", "unit", "kind", "higher_is_better", "description")

# --- metrics registry ----------------------------------------------------------------------


def _metric_state(metric: Metric) -> dict[str, Any]:
    return {"key": metric.key, **{name: getattr(metric, name) for name in METRIC_FIELDS}}


@transaction.atomic
def metric_create(*, project: Project, key: str, name: str, kind: str, higher_is_better: bool, unit: str = "",
                  description: str = "", actor: Actor) -> Metric:
    check_text_limit("description", description)
    if Metric.objects.filter(project=project, key=key).exists():
        raise ValidationError({"key": f"A metric with key “{key}” already exists in this project."})
    metric = Metric(project=project, key=key, name=name, kind=kind, higher_is_better=higher_is_better, unit=unit,
                    description=description)
    metric.full_clean()
    try:
        with transaction.atomic():
            metric.save()
    except IntegrityError as exc:  # created meanwhile by someone else
        raise ValidationError({"key": f"A metric with key “{key}” already exists in this project."}) from exc
    record(actor=actor, action=AuditAction.METRIC_CREATED, target=metric, project=project, after=_metric_state(metric),
           summary=f"Metric {key} created ({MetricKind(kind).label}, {'higher' if higher_is_better else 'lower'} is better)")
    return metric


@transaction.atomic
def metric_update(*, metric: Metric, actor: Actor, **changes: Any) -> Metric:
    """Change a metric's name, unit, kind, direction or description; the key never changes."""
    unknown = set(changes) - set(METRIC_FIELDS)
    if unknown:
        raise ValidationError({name: "This field cannot be changed." for name in sorted(unknown)})
    check_text_limit("description", changes.get("description"))
    metric = Metric.objects.select_for_update().select_related("project").get(pk=metric.pk)
    before = _metric_state(metric)
    for name, value in changes.items():
        setattr(metric, name, value)
    metric.full_clean()
    after = _metric_state(metric)
    if after == before:
        return metric
    metric.save()
    changed = {name: after[name] for name in after if after[name] != before[name]}
    record(actor=actor, action=AuditAction.METRIC_UPDATED, target=metric, project=metric.project,
           before={name: before[name] for name in changed}, after=changed,
           summary=f"Metric {metric.key}: {', '.join(sorted(changed))} changed")
    return metric


# --- aggregation ---------------------------------------------------------------------------


def events_aggregate(*, chunk_size: int = AGGREGATION_CHUNK, budget_seconds: float = AGGREGATION_BUDGET_SECONDS) -> int:
    """Fold new raw events into the aggregates, chunk by chunk, until caught up or out of time.

    Each chunk is one transaction that holds the cursor row's lock, reads events past the
    (txid, id) watermark, merges them into the aggregates (the per-minute buckets and their
    hourly and daily roll-ups, from the same in-memory deltas) and moves the watermark: a
    crash loses nothing and counts nothing twice. A run that finds the lock taken returns at
    once (the other run is doing the work). Returns the number of events folded in.
    """
    AggregationCursor.objects.get_or_create(name=CURSOR_NAME)
    deadline = time.monotonic() + budget_seconds
    total = 0
    while True:
        processed = _aggregate_chunk(chunk_size)
        if processed is None:
            break
        total += processed
        if processed < chunk_size or time.monotonic() >= deadline:
            break
    return total


def raw_events_prune(*, retention: datetime.timedelta, batch_size: int = PRUNE_BATCH,
                     budget_seconds: float = PRUNE_BUDGET_SECONDS,
                     now: datetime.datetime | None = None) -> dict[str, int]:
    """Delete raw events received before `now - retention` that aggregation has already read.

    Only events at or below the aggregation watermark ((txid, id) <= the cursor's) go: an
    event not yet folded into the aggregates is kept however old it is. Aggregates, roll-ups
    and unit exposures (what guardrails and plan evidence read) are other tables and are not
    touched. Each batch is one short DELETE of at most `batch_size` rows (its own transaction),
    and the run stops once caught up or after `budget_seconds`; the next run goes on.
    Returns {"deleted": rows, "batches": statements}.
    """
    cutoff = (now or timezone.now()) - retention
    cursor_row = AggregationCursor.objects.filter(name=CURSOR_NAME).first()
    deleted = batches = 0
    if cursor_row is None:
        return {"deleted": 0, "batches": 0}
    aggregated = Q(txid__lt=cursor_row.last_txid) | Q(txid=cursor_row.last_txid, id__lte=cursor_row.last_id)
    deadline = time.monotonic() + budget_seconds
    while True:
        ids = list(Event.objects.filter(aggregated, received_at__lt=cutoff)
                   .order_by("txid", "id").values_list("id", flat=True)[:batch_size])
        if not ids:
            break
        deleted += Event.objects.filter(id__in=ids).delete()[0]
        batches += 1
        if len(ids) < batch_size or time.monotonic() >= deadline:
            break
    if deleted:
        logger.info("Pruned %d raw telemetry events received before %s in %d batches.", deleted,
                    cutoff.isoformat(), batches)
    return {"deleted": deleted, "batches": batches}


def _lock_cursor() -> AggregationCursor | None:
    rows = AggregationCursor.objects.filter(name=CURSOR_NAME)
    if connection.vendor == "postgresql":
        return rows.select_for_update(skip_locked=True).first()
    # SQLite: a write takes the database's write lock, so the reads below cannot interleave.
    rows.update(updated_at=timezone.now())
    return rows.first()


# The next transaction id (xid8) and this transaction's; the oldest running writer of this
# database (pg_stat_activity.backend_xid is a 32-bit xid: widened with the current epoch).
HORIZON_SQL = """
WITH now AS (SELECT pg_current_xact_id()::text::bigint AS own,
                    pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next),
     writers AS (SELECT ((now.next >> 32) << 32) + a.backend_xid::text::bigint AS wide, now.next
                 FROM pg_stat_activity a, now
                 WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL
                   AND a.pid <> pg_backend_pid())
SELECT COALESCE((SELECT min(CASE WHEN wide > next THEN wide - 4294967296 ELSE wide END) FROM writers),
                (SELECT next FROM now)),
       (SELECT own FROM now)
"""


def _visible_events(cursor_row: AggregationCursor, limit: int) -> list[tuple]:
    events = (Event.objects.filter(txid__gte=cursor_row.last_txid)
              .exclude(txid=cursor_row.last_txid, id__lte=cursor_row.last_id))
    if connection.vendor == "postgresql":
        # Only transactions older than every writing transaction still running in this
        # database: their rows are all visible now, and no later commit can add a row below
        # this bound. Other databases on the cluster do not hold it back (a cluster-wide
        # snapshot xmin would stall on any long transaction anywhere). (This transaction's own
        # rows are visible too; that only happens in tests, where one transaction does both.)
        with connection.cursor() as cursor:
            cursor.execute(HORIZON_SQL)
            horizon, own = cursor.fetchone()
        events = events.filter(Q(txid__lt=horizon) | Q(txid=own))
    return list(events.order_by("txid", "id").values_list(
        "id", "txid", "environment_id", "kind", "flag_id", "variant", "served", "metric_id", "value", "unit",
        "occurred_at")[:limit])


def _minute(when: datetime.datetime) -> datetime.datetime:
    return when.astimezone(datetime.UTC).replace(second=0, microsecond=0)


def _hour(minute: datetime.datetime) -> datetime.datetime:
    """The hour of a UTC minute from `_minute`."""
    return minute.replace(minute=0)


def _day(minute: datetime.datetime) -> datetime.datetime:
    """The UTC day of a minute from `_minute`."""
    return minute.replace(hour=0, minute=0)


Truncate = Callable[[datetime.datetime], datetime.datetime]
# Each roll-up: how a minute is truncated to its period, and the period's tables.
ROLLUPS: tuple[tuple[Truncate, type[ExposureRollup], type[OutcomeRollup]], ...] = (
    (_hour, HourlyExposureBucket, HourlyOutcomeBucket),
    (_day, DailyExposureBucket, DailyOutcomeBucket),
)


def _slices(values: list[Any], size: int = 5_000) -> Iterable[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


@transaction.atomic
def _aggregate_chunk(limit: int) -> int | None:
    cursor_row = _lock_cursor()
    if cursor_row is None:
        return None
    events = _visible_events(cursor_row, limit)
    if not events:
        return 0
    exposures: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])  # (flag, env, variant, minute) -> [n, fallbacks]
    seen: dict[tuple, list[datetime.datetime]] = {}  # (flag, env, variant, unit) -> [first, last]
    outcomes = []
    for _id, _txid, env, kind, flag, variant, served, metric, value, unit, when in events:
        if kind == EventKind.EXPOSURE:
            counts = exposures[(flag, env, variant, _minute(when))]
            counts[0] += 1
            counts[1] += served != variant
            span = seen.get((flag, env, variant, unit))
            if span is None:
                seen[(flag, env, variant, unit)] = [when, when]
            else:
                span[0], span[1] = min(span[0], when), max(span[1], when)
        else:
            outcomes.append((env, flag, variant, metric, value, unit, when))

    # Units: merge with what is stored, for first/last seen and for attributing outcomes.
    environments = sorted({e[2] for e in events})
    units = sorted({key[3] for key in seen} | {o[5] for o in outcomes if not o[2]})
    stored: dict[tuple, tuple[datetime.datetime, datetime.datetime]] = {}
    for part in _slices(units):
        for flag, env, variant, unit, first, last in UnitExposure.objects.filter(
                environment_id__in=environments, unit__in=part).values_list(
                "flag_id", "environment_id", "variant", "unit", "first_seen", "last_seen"):
            stored[(flag, env, variant, unit)] = (first, last)
    changed = []
    # ((flag, env, variant), old first-seen minute or None, new one): the roll-ups count units
    # by the period of their first exposure, and a late event can make that earlier.
    first_seen_moves: list[tuple[tuple, datetime.datetime | None, datetime.datetime]] = []
    for key, (first, last) in seen.items():
        old = stored.get(key)
        merged = (first, last) if old is None else (min(first, old[0]), max(last, old[1]))
        if merged != old:
            changed.append(UnitExposure(flag_id=key[0], environment_id=key[1], variant=key[2], unit=key[3],
                                        first_seen=merged[0], last_seen=merged[1]))
            if old is None or merged[0] != old[0]:
                first_seen_moves.append((key[:3], None if old is None else _minute(old[0]), _minute(merged[0])))
        stored[key] = merged
    if changed:
        UnitExposure.objects.bulk_create(changed, batch_size=2_000, update_conflicts=True,
                                         unique_fields=["flag_id", "environment_id", "variant", "unit"],
                                         update_fields=["first_seen", "last_seen"])

    assigned = _assignments(stored) if outcomes else {}
    values: dict[tuple, list[Any]] = {}  # (flag, env, variant, metric, minute) -> [count, total, squares, histogram]
    for env, flag, variant, metric, value, unit, when in outcomes:
        if flag and variant:
            targets = [(flag, variant)]
        else:
            by_flag = assigned.get((env, unit), {})
            flags = [flag] if flag else list(by_flag)
            targets = [(f, v) for f in flags if (v := _variant_at(by_flag.get(f, ()), when))]
        for target_flag, target_variant in targets:
            slot = values.setdefault((target_flag, env, target_variant, metric, _minute(when)), [0, 0.0, 0.0, {}])
            slot[0] += 1
            slot[1] += value
            slot[2] += value * value
            histogram.add(slot[3], value)

    _merge_exposure_buckets(ExposureBucket, exposures)
    _merge_outcome_buckets(OutcomeBucket, values)
    for truncate, exposure_rollup, outcome_rollup in ROLLUPS:
        _merge_exposure_buckets(exposure_rollup, _exposures_rolled_up(exposures, first_seen_moves, truncate))
        _merge_outcome_buckets(outcome_rollup, _outcomes_rolled_up(values, truncate))
    last = events[-1]
    cursor_row.last_id, cursor_row.last_txid = last[0], last[1]
    cursor_row.events_processed += len(events)
    cursor_row.updated_at = timezone.now()
    cursor_row.save()
    return len(events)


def _assignments(stored: dict[tuple, tuple]) -> dict[tuple, dict[int, list[tuple]]]:
    """(env, unit) -> {flag: [(variant, first_seen, last_seen)]}"""
    result: dict[tuple, dict[int, list[tuple]]] = {}
    for (flag, env, variant, unit), (first, last) in stored.items():
        result.setdefault((env, unit), {}).setdefault(flag, []).append((variant, first, last))
    return result


def _variant_at(spans: Iterable[tuple], when: datetime.datetime) -> str | None:
    """The variant the unit was last exposed to at `when`: among variants first seen by then,
    the one seen latest up to `when` (ties: the one first seen latest)."""
    best = None
    for variant, first, last in spans:
        if first > when:
            continue
        rank = (min(last, when), first)
        if best is None or rank > best[0]:
            best = (rank, variant)
    return best[1] if best else None


def _exposures_rolled_up(exposures: dict[tuple, list[int]], first_seen_moves: list[tuple],
                         truncate: Truncate) -> dict[tuple, list[int]]:
    """The chunk's minute deltas truncated to the period, with the units' first exposures:
    (flag, env, variant, period) -> [exposures, fallbacks, units]."""
    rolled: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
    for (flag, env, variant, minute), (n, fallbacks) in exposures.items():
        slot = rolled[(flag, env, variant, truncate(minute))]
        slot[0] += n
        slot[1] += fallbacks
    for key, old, new in first_seen_moves:
        period = truncate(new)
        if old is None:
            rolled[(*key, period)][2] += 1
        elif (old_period := truncate(old)) != period:
            rolled[(*key, old_period)][2] -= 1
            rolled[(*key, period)][2] += 1
    return rolled


def _outcomes_rolled_up(values: dict[tuple, list[Any]], truncate: Truncate) -> dict[tuple, list[Any]]:
    """(flag, env, variant, metric, period) -> [count, total, squares, histogram] from the minute deltas."""
    rolled: dict[tuple, list[Any]] = {}
    for (flag, env, variant, metric, minute), (count, total, squares, hist) in values.items():
        slot = rolled.setdefault((flag, env, variant, metric, truncate(minute)), [0, 0.0, 0.0, {}])
        slot[0] += count
        slot[1] += total
        slot[2] += squares
        histogram.merge_into(slot[3], hist)
    return rolled


def _merge_exposure_buckets(model: type[ExposureBucket | ExposureRollup], exposures: dict[tuple, list[int]]) -> None:
    """Add the deltas ([exposures, fallbacks], and units for a roll-up) to the stored rows of
    `model`, creating the missing ones."""
    if not exposures:
        return
    fields = ["exposures", "fallbacks"] + (["units"] if issubclass(model, ExposureRollup) else [])
    keys = list(exposures)
    existing = {
        (flag, env, variant, bucket): counts
        for flag, env, variant, bucket, *counts in model.objects.filter(
            flag_id__in={k[0] for k in keys}, environment_id__in={k[1] for k in keys},
            bucket__in={k[3] for k in keys}).values_list("flag_id", "environment_id", "variant", "bucket", *fields)
    }
    none = [0] * len(fields)
    rows = []
    for key, deltas in exposures.items():
        old = existing.get(key, none)
        rows.append(model(flag_id=key[0], environment_id=key[1], variant=key[2], bucket=key[3],
                          **{name: old[i] + deltas[i] for i, name in enumerate(fields)}))
    model.objects.bulk_create(rows, batch_size=2_000, update_conflicts=True,
                              unique_fields=["flag_id", "environment_id", "bucket", "variant"], update_fields=fields)


def _merge_outcome_buckets(model: type[OutcomeBucket | OutcomeRollup], values: dict[tuple, list[Any]]) -> None:
    if not values:
        return
    keys = list(values)
    existing = {
        (flag, env, variant, metric, bucket): (count, total, squares, hist)
        for flag, env, variant, metric, bucket, count, total, squares, hist in model.objects.filter(
            flag_id__in={k[0] for k in keys}, environment_id__in={k[1] for k in keys},
            metric_id__in={k[3] for k in keys}, bucket__in={k[4] for k in keys}).values_list(
            "flag_id", "environment_id", "variant", "metric_id", "bucket", "count", "total", "total_squares",
            "histogram")
    }
    rows = []
    for key, (count, total, squares, hist) in values.items():
        old = existing.get(key)
        if old is not None:
            count, total, squares = count + old[0], total + old[1], squares + old[2]
            hist = histogram.merge((hist, old[3]))
        rows.append(model(flag_id=key[0], environment_id=key[1], variant=key[2], metric_id=key[3],
                          bucket=key[4], count=count, total=total, total_squares=squares, histogram=hist))
    model.objects.bulk_create(rows, batch_size=1_000, update_conflicts=True,
                              unique_fields=["flag_id", "environment_id", "metric_id", "bucket", "variant"],
                              update_fields=["count", "total", "total_squares", "histogram"])
