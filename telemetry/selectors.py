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
  log-scale histograms (within 1 %), None when there is nothing to compute from.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from django.db.models import Count, Sum

from telemetry import histogram
from telemetry.models import ExposureBucket, Metric, OutcomeBucket, UnitExposure


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _metric_values(count: int, total: float, exposures: int, hist: dict[str, int] | None) -> dict[str, Any]:
    return {"count": count, "sum": total, "mean": _ratio(total, count), "rate": _ratio(total, exposures),
            "p95": histogram.percentile(hist, 0.95) if hist else None}


def evidence(*, flag_id: int, environment_id: int, start: datetime.datetime, end: datetime.datetime,
             metric_keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{variant: {"exposures", "units", "fallback_rate", "metrics": {key: {...}}}}: four queries."""
    window = {"flag_id": flag_id, "environment_id": environment_id, "bucket__gte": start, "bucket__lt": end}
    result: dict[str, dict[str, Any]] = {}

    def variant_row(variant: str) -> dict[str, Any]:
        return result.setdefault(variant, {"exposures": 0, "units": 0, "fallbacks": 0, "fallback_rate": None,
                                           "metrics": {}})

    for row in (ExposureBucket.objects.filter(**window).values("variant")
                .annotate(exposures=Sum("exposures"), fallbacks=Sum("fallbacks")).order_by()):
        entry = variant_row(row["variant"])
        entry["exposures"], entry["fallbacks"] = row["exposures"], row["fallbacks"]
        entry["fallback_rate"] = _ratio(row["fallbacks"], row["exposures"])
    for row in (UnitExposure.objects.filter(flag_id=flag_id, environment_id=environment_id, first_seen__gte=start,
                                            first_seen__lt=end).values("variant").annotate(units=Count("id")).order_by()):
        variant_row(row["variant"])["units"] = row["units"]
    metrics = dict(Metric.objects.filter(project__environments=environment_id, key__in=list(metric_keys))
                   .values_list("id", "key"))
    merged: dict[tuple[str, int], list[Any]] = {}
    for variant, metric_id, count, total, hist in (OutcomeBucket.objects.filter(**window, metric_id__in=list(metrics))
                                                   .values_list("variant", "metric_id", "count", "total", "histogram")):
        slot = merged.setdefault((variant, metric_id), [0, 0.0, {}])
        slot[0] += count
        slot[1] += total
        slot[2] = histogram.merge((slot[2], hist))
    for (variant, metric_id), (count, total, hist) in merged.items():
        entry = variant_row(variant)
        entry["metrics"][metrics[metric_id]] = _metric_values(count, total, entry["exposures"], hist)
    for entry in result.values():
        for key in metric_keys:
            if key in metrics.values():
                entry["metrics"].setdefault(key, _metric_values(0, 0.0, entry["exposures"], None))
    return result


def _value(kind: str, count: int, total: float, hist: dict[str, int]) -> float | None:
    if kind == "count":
        return total
    if kind == "p95":
        return histogram.percentile(hist, 0.95)
    return _ratio(total, count)  # rate and mean: per outcome event


def series(*, flag_id: int, environment_id: int, metric_key: str, start: datetime.datetime,
           end: datetime.datetime, bucket_minutes: int) -> list[dict[str, Any]]:
    """[{"bucket", "variant", "value", "count"}] per `bucket_minutes` window, oldest first: two
    queries. The value follows the metric's kind: count → sum of values, rate and mean → mean
    per outcome, p95 → 95th percentile."""
    if bucket_minutes < 1:
        raise ValueError("bucket_minutes must be at least 1")
    metric = Metric.objects.filter(project__environments=environment_id, key=metric_key).values_list(
        "id", "kind").first()
    if metric is None:
        return []
    metric_id, kind = metric
    width = datetime.timedelta(minutes=bucket_minutes)
    origin = start.astimezone(datetime.UTC).replace(second=0, microsecond=0)
    grouped: dict[tuple[datetime.datetime, str], list[Any]] = {}
    for bucket, variant, count, total, hist in (
            OutcomeBucket.objects.filter(flag_id=flag_id, environment_id=environment_id, metric_id=metric_id,
                                         bucket__gte=start, bucket__lt=end)
            .values_list("bucket", "variant", "count", "total", "histogram")):
        slot_start = origin + width * ((bucket - origin) // width)
        slot = grouped.setdefault((slot_start, variant), [0, 0.0, {}])
        slot[0] += count
        slot[1] += total
        if kind == "p95":
            slot[2] = histogram.merge((slot[2], hist))
    return [{"bucket": bucket, "variant": variant, "value": _value(kind, count, total, hist), "count": count}
            for (bucket, variant), (count, total, hist) in sorted(grouped.items())]
