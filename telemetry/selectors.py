"""Reads for rollout evidence: per-variant exposures, units, fallback rate and metric values
over a window, and a metric's series over time. Each runs a fixed number of queries.

Meanings (windows are [start, end); aggregates are per minute, so a window covers the
minutes that start in it; units use their exact first-exposure times):
- `exposures`: exposure events whose time falls in the window.
- `units`: distinct assignment units *first* exposed to the variant in the window (the
  `UnitExposure` table). For a window that starts when the variant started being served
  (a plan's start), that is every distinct unit exposed in it.
- `fallback_rate`: exposures where served ≠ assigned, over exposures.
- per metric: `count` outcome events attributed to the variant, `sum`, `mean` = sum / count
  (for a rate metric reported 0/1 per case, its rate), `rate` = sum / exposures (for events
  reported only when something happens, e.g. one incident signal), `p95` from the merged
  log-scale histograms (within 1 %), None when there is nothing to compute from;
  `variance` of the outcome values (population form, from the sum of their squares); for a
  p95 metric also `histogram`, the merged {bin: count}, which the sequential p95 interval reads
  (rollouts/plans/sequential.py).

How: every whole UTC day inside the window is read from the daily roll-ups, every whole
hour left from the hourly ones (`units` there counts first exposures per period), and only
the partial hours at the edges from the minute tables (`UnitExposure` for units): one
`UNION ALL` query per table kind, so a window of weeks reads its days plus at most two
days of hours and two hours of minutes per variant and metric, not tens of thousands of
minutes. The answer is the same as from minutes alone (`tests/telemetry/test_rollups.py`).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum, Value

from telemetry import histogram
from telemetry.models import (
    DailyExposureBucket,
    DailyOutcomeBucket,
    ExposureBucket,
    HourlyExposureBucket,
    HourlyOutcomeBucket,
    Metric,
    OutcomeBucket,
    UnitExposure,
)

MINUTE = datetime.timedelta(minutes=1)
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
Span = tuple[datetime.datetime, datetime.datetime]


def _floor(when: datetime.datetime, period: datetime.timedelta) -> datetime.datetime:
    """The start of the UTC minute, hour or day `when` falls in."""
    when = when.astimezone(datetime.UTC).replace(second=0, microsecond=0)
    if period >= HOUR:
        when = when.replace(minute=0)
    return when.replace(hour=0) if period >= DAY else when


def _ceil(when: datetime.datetime, period: datetime.timedelta) -> datetime.datetime:
    floor = _floor(when, period)
    return floor if floor == when else floor + period


def _split(start: datetime.datetime, end: datetime.datetime, *, origin: datetime.datetime | None = None,
           width: datetime.timedelta | None = None) -> dict[datetime.timedelta, list[Span]]:
    """[start, end) as the spans to read from each table: {DAY: whole days, HOUR: whole hours
    of what is left, MINUTE: the rest}.

    A day or hour is read whole when it lies inside the window and, with slots of `width`
    from `origin`, inside one slot. Adjacent spans are joined. A window with nothing in it
    still gets its (empty) minute span, so the caller's query count is fixed.
    """
    spans: dict[datetime.timedelta, list[Span]] = {DAY: [], HOUR: [], MINUTE: []}
    rest = [(start, end)] if start < end else []
    for period in (DAY, HOUR):
        if width is not None and width < period:
            continue  # no slot can hold a whole one
        left = []
        for first, last in rest:
            position, period_start = first, _ceil(first, period)
            while period_start + period <= last:
                period_end = period_start + period
                if width is None or (period_start - origin) // width == (period_end - MINUTE - origin) // width:
                    if position < period_start:
                        left.append((position, period_start))
                    whole = spans[period]
                    if whole and whole[-1][1] == period_start:
                        whole[-1] = (whole[-1][0], period_end)
                    else:
                        whole.append((period_start, period_end))
                    position = period_end
                period_start = period_end
            if position < last:
                left.append((position, last))
        rest = left
    spans[MINUTE] = rest if rest or spans[DAY] or spans[HOUR] else [(start, end)]
    return spans


def _within(field: str, spans: list[Span]) -> Q:
    condition = Q()
    for first, last in spans:
        condition |= Q(**{f"{field}__gte": first, f"{field}__lt": last})
    return condition


def _union(spans: dict[datetime.timedelta, list[Span]], minute_rows: QuerySet, hourly_rows: QuerySet,
           daily_rows: QuerySet, minute_field: str = "bucket") -> QuerySet:
    """One query: the minute rows of the partial hours UNION ALL the hourly rows of the whole
    hours UNION ALL the daily rows of the whole days."""
    parts = [rows.filter(_within(minute_field if period == MINUTE else "bucket", spans[period]))
             for period, rows in ((MINUTE, minute_rows), (HOUR, hourly_rows), (DAY, daily_rows)) if spans[period]]
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:], all=True)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def variance(count: int, total: float, squares: float) -> float | None:
    """The population variance of `count` values from their sum and the sum of their squares."""
    if count <= 0:
        return None
    mean = total / count
    spread = squares / count - mean * mean
    return max(spread, 0.0) if math.isfinite(spread) else None  # values near the float limit: beyond measure


def _metric_values(count: int, total: float, exposures: int, hist: dict[str, int] | None,
                   keep_histogram: bool = False, squares: float = 0.0) -> dict[str, Any]:
    values = {"count": count, "sum": total, "mean": _ratio(total, count), "rate": _ratio(total, exposures),
              "p95": histogram.percentile(hist, 0.95) if hist else None,
              "variance": variance(count, total, squares)}
    if keep_histogram:
        values["histogram"] = dict(hist or {})
    return values


@dataclass(frozen=True)
class Window:
    """One evidence question: a flag in an environment over [start, end), with these metrics."""

    flag_id: int
    environment_id: int
    start: datetime.datetime
    end: datetime.datetime
    metric_keys: tuple[str, ...]


def evidence(*, flag_id: int, environment_id: int, start: datetime.datetime, end: datetime.datetime,
             metric_keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{variant: {"exposures", "units", "fallback_rate", "metrics": {key: {...}}}}: four queries."""
    return evidence_many([Window(flag_id, environment_id, start, end, tuple(metric_keys))])[0]


def evidence_many(windows: Sequence[Window]) -> list[dict[str, dict[str, Any]]]:
    """`evidence` for several windows at once (the rollout board): still four queries, each
    window's parts tagged with its index in one UNION ALL per table."""
    if not windows:
        return []
    results: list[dict[str, dict[str, Any]]] = [{} for _ in windows]
    spans = [_split(w.start, w.end) for w in windows]

    def variant_row(index: int, variant: str) -> dict[str, Any]:
        return results[index].setdefault(variant, {"exposures": 0, "units": 0, "fallbacks": 0,
                                                   "fallback_rate": None, "metrics": {}})

    def tagged(build: Any, minute_field: str = "bucket") -> QuerySet:
        parts = [_union(spans[i], *build(i, w), minute_field=minute_field) for i, w in enumerate(windows)]
        return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:], all=True)

    def scope(w: Window) -> dict[str, int]:
        return {"flag_id": w.flag_id, "environment_id": w.environment_id}

    def exposure_sums(i: int, w: Window) -> list[QuerySet]:
        return [model.objects.filter(**scope(w)).annotate(w=Value(i)).values("w", "variant")
                .annotate(exposures=Sum("exposures"), fallbacks=Sum("fallbacks")).order_by()
                for model in (ExposureBucket, HourlyExposureBucket, DailyExposureBucket)]

    for row in tagged(exposure_sums):
        entry = variant_row(row["w"], row["variant"])
        entry["exposures"] += int(row["exposures"])
        entry["fallbacks"] += int(row["fallbacks"])
    for result in results:
        for entry in result.values():
            entry["fallback_rate"] = _ratio(entry["fallbacks"], entry["exposures"])

    def unit_counts(i: int, w: Window) -> list[QuerySet]:
        return [UnitExposure.objects.filter(**scope(w)).annotate(w=Value(i)).values("w", "variant")
                .annotate(units=Count("id")).order_by(),
                *(model.objects.filter(**scope(w)).annotate(w=Value(i)).values("w", "variant")
                  .annotate(units=Sum("units")).order_by() for model in (HourlyExposureBucket, DailyExposureBucket))]

    for row in tagged(unit_counts, minute_field="first_seen"):
        if row["units"]:
            variant_row(row["w"], row["variant"])["units"] += int(row["units"])
    wanted = {key for w in windows for key in w.metric_keys}
    metric_ids: dict[tuple[int, str], int] = {}  # (environment id, key) -> metric id
    quantile_ids: set[int] = set()  # p95 metrics: their evidence keeps the merged histogram
    for metric_id, key, environment_id, kind in (Metric.objects.filter(
            project__environments__in={w.environment_id for w in windows}, key__in=wanted)
            .values_list("id", "key", "project__environments", "kind")):
        metric_ids[(environment_id, key)] = metric_id
        if kind == "p95":
            quantile_ids.add(metric_id)
    keys_by_id = {metric_id: key for (_, key), metric_id in metric_ids.items()}
    columns = ("w", "variant", "metric_id", "count", "total", "total_squares", "histogram")

    def outcomes(i: int, w: Window) -> list[QuerySet]:
        ids = [metric_ids[(w.environment_id, key)] for key in w.metric_keys if (w.environment_id, key) in metric_ids]
        return [model.objects.filter(**scope(w), metric_id__in=ids).annotate(w=Value(i)).values_list(*columns)
                for model in (OutcomeBucket, HourlyOutcomeBucket, DailyOutcomeBucket)]

    merged: dict[tuple[int, str, int], list[Any]] = {}
    for index, variant, metric_id, count, total, squares, hist in tagged(outcomes):
        slot = merged.setdefault((index, variant, metric_id), [0, 0.0, 0.0, {}])
        slot[0] += count
        slot[1] += total
        slot[2] += squares
        histogram.merge_into(slot[3], hist)
    for (index, variant, metric_id), (count, total, squares, hist) in merged.items():
        entry = variant_row(index, variant)
        entry["metrics"][keys_by_id[metric_id]] = _metric_values(count, total, entry["exposures"], hist,
                                                                 metric_id in quantile_ids, squares)
    for w, result in zip(windows, results, strict=True):
        for entry in result.values():
            for key in w.metric_keys:
                if (w.environment_id, key) in metric_ids:
                    metric_id = metric_ids[(w.environment_id, key)]
                    entry["metrics"].setdefault(key, _metric_values(0, 0.0, entry["exposures"], None,
                                                                    metric_id in quantile_ids))
    return results


def _value(kind: str, count: int, total: float, hist: dict[str, int]) -> float | None:
    if kind == "count":
        return total
    if kind == "p95":
        return histogram.percentile(hist, 0.95)
    return _ratio(total, count)  # rate and mean: per outcome


def series(*, flag_id: int, environment_id: int, metric_key: str, start: datetime.datetime,
           end: datetime.datetime, bucket_minutes: int) -> list[dict[str, Any]]:
    """[{"bucket", "variant", "value", "count", "total", "squares", "histogram"}] per
    `bucket_minutes` window, oldest first: two queries. The value follows the metric's kind:
    count → sum of values, rate and mean → mean per outcome, p95 → 95th percentile; `total`,
    `squares` (the sum of the values' squares) and, for a p95 metric, the merged `histogram`
    (empty for the others: reading them costs more than the rest) let a caller add slots up
    (the sequential interval over time on a chart).

    Slots start at `start` truncated to the minute and cover the minutes that start in
    [start, end). When `bucket_minutes` is a multiple of 60 (of 1,440) they start at `start`
    truncated to the UTC *hour* (*day*) instead, and each point covers its whole slot: every
    hour (day) that overlaps [start, end) counts in full, read from the hourly (daily)
    roll-ups alone. For a chart over days that means the first and last points are whole
    periods rather than part of one.
    """
    if bucket_minutes < 1:
        raise ValueError("bucket_minutes must be at least 1")
    metric = Metric.objects.filter(project__environments=environment_id, key=metric_key).values_list(
        "id", "kind").first()
    if metric is None:
        return []
    metric_id, kind = metric
    scope = {"flag_id": flag_id, "environment_id": environment_id, "metric_id": metric_id}
    columns = ("bucket", "variant", "count", "total", "total_squares") + (("histogram",) if kind == "p95" else ())
    width = datetime.timedelta(minutes=bucket_minutes)
    if bucket_minutes % (24 * 60) == 0 or bucket_minutes % 60 == 0:
        period, rollup = (DAY, DailyOutcomeBucket) if bucket_minutes % (24 * 60) == 0 else (HOUR, HourlyOutcomeBucket)
        origin = _floor(start, period)
        rows = rollup.objects.filter(**scope, bucket__gte=origin, bucket__lt=end).values_list(*columns)
    else:
        origin = _floor(start, MINUTE)
        rows = _union(_split(start, end, origin=origin, width=width), *(
            model.objects.filter(**scope).values_list(*columns)
            for model in (OutcomeBucket, HourlyOutcomeBucket, DailyOutcomeBucket)))
    grouped: dict[tuple[datetime.datetime, str], list[Any]] = {}
    for bucket, variant, count, total, squares, *hist in rows:
        slot_start = origin + width * ((bucket - origin) // width)
        slot = grouped.setdefault((slot_start, variant), [0, 0.0, 0.0, {}])
        slot[0] += count
        slot[1] += total
        slot[2] += squares
        if hist:
            histogram.merge_into(slot[3], hist[0])
    return [{"bucket": bucket, "variant": variant, "value": _value(kind, count, total, hist), "count": count,
             "total": total, "squares": squares, "histogram": hist}
            for (bucket, variant), (count, total, squares, hist) in sorted(grouped.items())]
