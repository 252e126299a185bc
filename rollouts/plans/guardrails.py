"""Guardrail evaluation for rollout stages: pure, no Django, no queries.

A guardrail `{metric, kind, threshold, min_samples}` compares the candidate's value of a
metric with an absolute limit (`absolute_max`, `absolute_min`) or with the baseline's value
times `threshold` (`relative_max`: candidate ≤ threshold × baseline; `relative_min`: candidate
≥ threshold × baseline). Status is green (holds), amber (too few samples to judge: fewer than
`min_samples` on the candidate, or on the baseline for a relative guardrail) or red (breached).

Which number of the evidence is "the value" follows the metric's kind (telemetry.selectors):
p95 → `p95`; rate and mean → `mean` (per outcome event); count → `rate` (per exposure, since
count metrics are reported only when something happens). Samples are outcome events, or
exposures for count metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("absolute_max", "absolute_min", "relative_max", "relative_min")
GREEN, AMBER, RED = "green", "amber", "red"
MAX_THRESHOLD = 1e9  # bigger limits mean nothing, and a factor that large overflows a product


@dataclass(frozen=True)
class GuardrailResult:
    metric: str
    kind: str
    threshold: float
    min_samples: int
    status: str
    candidate_value: float | None
    baseline_value: float | None
    candidate_samples: int
    baseline_samples: int
    limit: float | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Metric kinds whose value is never below 0: a rate is a share of outcomes, a count's value is
# a number of events per exposure.
NON_NEGATIVE_KINDS = ("count", "rate")


def threshold_problem(kind: str, threshold: float, metric_kind: str | None) -> str:
    """Why a threshold cannot mean anything for this guardrail kind and metric ("" when it can):
    a relative factor must be positive; for a metric that is never below 0, "at least" a
    limit ≤ 0 always holds and "at most" a limit < 0 never does."""
    if kind.startswith("relative") and threshold <= 0:
        return "a relative threshold is a positive factor (1.2 = 20 % worse at most)"
    if metric_kind in NON_NEGATIVE_KINDS:
        if kind == "absolute_min" and threshold <= 0:
            return (f"“at least {threshold:g}” always holds for a {metric_kind}, which is never below 0: "
                    "give a limit above 0")
        if kind == "absolute_max" and threshold < 0:
            return f"“at most {threshold:g}” is never met by a {metric_kind}, which is never below 0"
    return ""


def guardrail_problems(guardrail: Any, metric_kind: str | None = None) -> list[str]:
    """What is wrong with one guardrail's shape, for people; empty when it is fine. With the
    metric's kind, also a threshold that cannot mean anything for it."""
    if not isinstance(guardrail, Mapping):
        return ["must be {metric, kind, threshold, min_samples}"]
    problems = []
    unknown = set(guardrail) - {"metric", "kind", "threshold", "min_samples"}
    if unknown:
        problems.append(f"unknown field(s): {', '.join(sorted(unknown))}")
    if not isinstance(guardrail.get("metric"), str) or not guardrail.get("metric"):
        problems.append("metric: a metric key")
    if guardrail.get("kind") not in KINDS:
        problems.append(f"kind: one of {', '.join(KINDS)}")
    threshold = guardrail.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        problems.append("threshold: a finite number")
    elif abs(threshold) > MAX_THRESHOLD:
        problems.append(f"threshold: at most {MAX_THRESHOLD:g} in size")
    elif problem := threshold_problem(str(guardrail.get("kind", "")), threshold, metric_kind):
        problems.append(f"threshold: {problem}")
    min_samples = guardrail.get("min_samples", 0)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 0:
        problems.append("min_samples: a whole number ≥ 0")
    return problems


def _value_and_samples(variant: Mapping[str, Any] | None, metric: str, metric_kind: str) -> tuple[float | None, int]:
    if not variant:
        return None, 0
    if metric_kind == "count":
        values = variant.get("metrics", {}).get(metric) or {}
        return values.get("rate"), int(variant.get("exposures") or 0)
    values = variant.get("metrics", {}).get(metric)
    if not values:
        return None, 0
    field = "p95" if metric_kind == "p95" else "mean"
    return values.get(field), int(values.get("count") or 0)


def evaluate_guardrail(guardrail: Mapping[str, Any], *, evidence: Mapping[str, Any], baseline: str, candidate: str,
                       metric_kind: str) -> GuardrailResult:
    metric, kind = guardrail["metric"], guardrail["kind"]
    threshold, min_samples = float(guardrail["threshold"]), int(guardrail.get("min_samples", 0))
    candidate_value, candidate_samples = _value_and_samples(evidence.get(candidate), metric, metric_kind)
    baseline_value, baseline_samples = _value_and_samples(evidence.get(baseline), metric, metric_kind)
    relative = kind.startswith("relative")

    def result(status: str, limit: float | None, message: str) -> GuardrailResult:
        return GuardrailResult(metric, kind, threshold, min_samples, status, candidate_value, baseline_value,
                               candidate_samples, baseline_samples, limit, message)

    if candidate_samples < min_samples or candidate_value is None:
        return result(AMBER, None, f"{metric}: {candidate_samples} of {min_samples} candidate samples")
    if relative and (baseline_samples < min_samples or baseline_value is None):
        return result(AMBER, None, f"{metric}: {baseline_samples} of {min_samples} baseline samples")
    limit = threshold * baseline_value if relative else threshold
    if not math.isfinite(limit) or not math.isfinite(candidate_value):
        return result(AMBER, None, f"{metric}: the numbers are out of range; cannot judge")
    breached = candidate_value > limit if kind.endswith("_max") else candidate_value < limit
    relation = "at most" if kind.endswith("_max") else "at least"
    against = f" ({threshold:g} × baseline {baseline_value:.4g})" if relative else ""
    if breached:
        return result(RED, limit, f"{metric}: candidate {candidate_value:.4g} breaches {relation} {limit:.4g}{against}")
    return result(GREEN, limit, f"{metric}: candidate {candidate_value:.4g} is {relation} {limit:.4g}{against}")


def evaluate_guardrails(guardrails: Sequence[Mapping[str, Any]], *, evidence: Mapping[str, Any], baseline: str,
                        candidate: str, metric_kinds: Mapping[str, str]) -> list[GuardrailResult]:
    """One result per guardrail, in order. An unregistered metric is judged like a mean."""
    return [evaluate_guardrail(g, evidence=evidence, baseline=baseline, candidate=candidate,
                               metric_kind=metric_kinds.get(g["metric"], "mean")) for g in guardrails]


def overall(results: Sequence[GuardrailResult]) -> str:
    """red if any guardrail is red, else amber if any is amber, else green (also with none)."""
    statuses = {r.status for r in results}
    return RED if RED in statuses else AMBER if AMBER in statuses else GREEN
