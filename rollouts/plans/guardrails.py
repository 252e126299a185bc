"""Guardrail evaluation for rollout stages: pure, no Django, no queries.

A guardrail `{metric, kind, threshold, min_samples}` bounds how much worse the candidate may be:
`relative_max` 1.2 allows the candidate's value up to 1.2 × the baseline's (20 % worse),
`relative_min` 0.9 down to 0.9 × the baseline's; `absolute_max` / `absolute_min` bound the
candidate's own value.

Each guardrail is judged with an **always-valid 95 % confidence interval** (a confidence
sequence, rollouts/plans/sequential.py, where the formulas and their sources are): on the
relative difference candidate / baseline − 1 for the relative kinds, on the candidate's value
for the absolute ones. It stays valid however often it is looked at, so the minute-by-minute
sweep does not inflate false alarms. Red when the whole interval lies beyond what the guardrail
allows, green when the whole interval lies within it, amber otherwise: not yet clear, or fewer
samples than `min_samples` (at least `MIN_SAMPLES`: the asymptotic interval needs some data to
be accurate) on the candidate, or on the baseline for a relative guardrail.

What is compared follows the metric's kind (telemetry.selectors): a rate or a mean is the mean
per outcome event (a rate's variance is p(1 − p), its largest for values in [0, 1]); a count is
events per exposure (its samples are exposures, since count metrics are reported only when
something happens); a p95 is the 95th percentile, judged with quantile confidence sequences
from the merged histograms. `candidate_value` / `baseline_value` stay the point estimates,
and `limit` the point limit (threshold × the baseline's value for a relative guardrail) a
chart draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rollouts.plans import sequential
from telemetry import histogram as histograms

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
    # The 95 % confidence sequence's ends (None: unbounded or not computed yet), on the relative
    # difference (candidate / baseline - 1) for a relative guardrail, on the candidate's value
    # for an absolute one; `allowed` is the end of what the guardrail allows on that scale.
    interval_low: float | None = None
    interval_high: float | None = None
    allowed: float | None = None
    scale: str = ""  # "relative" or "absolute"
    confidence: float = 1 - sequential.DEFAULT_ALPHA

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


MIN_SAMPLES = 30  # below this the asymptotic interval's coverage is not to be trusted


@dataclass(frozen=True)
class Arm:
    """One variant's evidence for one metric: exposures, outcome events, their sum, the
    outcome values' variance and (p95 metrics) the merged histogram."""

    exposures: int = 0
    count: int = 0
    total: float = 0.0
    variance: float | None = None
    histogram: Mapping[str, int] | None = None

    @classmethod
    def of(cls, variant: Mapping[str, Any] | None, metric: str) -> Arm:
        if not variant:
            return cls()
        values = variant.get("metrics", {}).get(metric) or {}
        return cls(int(variant.get("exposures") or 0), int(values.get("count") or 0), float(values.get("sum") or 0.0),
                   values.get("variance"), values.get("histogram"))

    def point(self, metric_kind: str) -> float | None:
        """The value a person reads: per exposure for a count, the p95, else the mean."""
        if metric_kind == "count":
            return self.total / self.exposures if self.exposures else None
        if metric_kind == "p95":
            return histograms.percentile(self.histogram, 0.95) if self.histogram else None
        return self.total / self.count if self.count else None

    def samples(self, metric_kind: str) -> int:
        return self.exposures if metric_kind == "count" else self.count

    def summary(self, metric_kind: str) -> sequential.Summary:
        """What the mean interval is built on: per exposure for a count (each exposure one
        observation, mostly 0), per outcome otherwise."""
        if metric_kind == "count":
            if self.exposures <= 0:
                return sequential.Summary(0, 0.0, 0.0)
            value_mean = self.total / self.count if self.count else 0.0
            squares = self.count * ((self.variance or 0.0) + value_mean ** 2)
            return sequential.Summary.from_sums(self.exposures, self.total, squares)
        if self.count <= 0:
            return sequential.Summary(0, 0.0, 0.0)
        mean = self.total / self.count
        if metric_kind == "rate" and 0.0 <= mean <= 1.0:
            return sequential.Summary(self.count, mean, mean * (1 - mean))
        return sequential.Summary(self.count, mean, max(self.variance or 0.0, 0.0))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _percent(share: float) -> str:
    share = round(abs(share) * 100, 6)  # 1 - 0.9 is 0.0999…
    return f"{share:.0f} %" if share >= 10 else f"{share:.1f} %"


def relative_words(low: float, high: float, *, higher_is_worse: bool) -> str:
    """An interval on candidate / baseline - 1 in words: "worse by 18–31 %", "better by 2–5 %",
    "between 3 % better and 8 % worse"."""
    worse_low, worse_high = (low, high) if higher_is_worse else (-high, -low)
    # a ratio bounded below only by 0 (a relative difference of -100 %) is not bounded at all
    worse_low = -math.inf if worse_low <= -1 else worse_low
    worse_high = math.inf if worse_high >= 1e6 else worse_high
    if worse_low > 0:
        return (f"worse by {_percent(worse_low)}–{_percent(worse_high)}" if math.isfinite(worse_high)
                else f"worse by at least {_percent(worse_low)}")
    if worse_high < 0:
        return (f"better by {_percent(worse_high)}–{_percent(worse_low)}" if math.isfinite(worse_low)
                else f"better by at least {_percent(worse_high)}")
    if -0.0005 < worse_low <= 0:  # it rounds to no difference at all
        return f"between no difference and {_percent(worse_high)} worse" if math.isfinite(worse_high) else \
            "no better, and any amount worse"
    if 0 <= worse_high < 0.0005:
        return f"between {_percent(worse_low)} better and no difference" if math.isfinite(worse_low) else \
            "any amount better, and no worse"
    better = f"{_percent(worse_low)} better" if math.isfinite(worse_low) else "any amount better"
    worse = f"{_percent(worse_high)} worse" if math.isfinite(worse_high) else "any amount worse"
    return f"between {better} and {worse}"


def _absolute_words(low: float, high: float) -> str:
    if math.isfinite(low) and math.isfinite(high):
        return f"between {low:.4g} and {high:.4g}"
    if math.isfinite(low):
        return f"at least {low:.4g}"
    if math.isfinite(high):
        return f"at most {high:.4g}"
    return "anywhere yet"


VERDICT_WORDS = {RED: "breached", GREEN: "holds", AMBER: "not yet clear"}


def _interval(kind: str, metric_kind: str, candidate: Arm, baseline: Arm) -> sequential.Interval | None:
    """The confidence sequence on the guardrail's scale: relative difference or the candidate's value."""
    if kind.startswith("relative"):
        if metric_kind == "p95":
            ratio = sequential.quantile_ratio_interval(candidate.histogram or {}, baseline.histogram or {})
            return sequential.Interval(ratio.low - 1, ratio.high - 1) if ratio else None
        return sequential.difference_interval(candidate.summary(metric_kind), baseline.summary(metric_kind),
                                              relative=True)
    if metric_kind == "p95":
        return sequential.quantile_interval(candidate.histogram or {})
    summary = candidate.summary(metric_kind)
    return sequential.mean_interval(summary) if summary.n > 0 else None


def judge(guardrail: Mapping[str, Any], *, candidate: Arm, baseline: Arm, metric_kind: str) -> GuardrailResult:
    """One guardrail judged on two arms' evidence (the sequential verdict; module docstring)."""
    metric, kind = guardrail["metric"], guardrail["kind"]
    threshold, min_samples = float(guardrail["threshold"]), int(guardrail.get("min_samples", 0))
    candidate_value, baseline_value = candidate.point(metric_kind), baseline.point(metric_kind)
    candidate_samples, baseline_samples = candidate.samples(metric_kind), baseline.samples(metric_kind)
    relative, higher_is_worse = kind.startswith("relative"), kind.endswith("_max")
    allowed = threshold - 1 if relative else threshold
    needed = max(min_samples, MIN_SAMPLES)

    def result(status: str, limit: float | None, message: str,
               interval: sequential.Interval | None = None) -> GuardrailResult:
        return GuardrailResult(metric, kind, threshold, min_samples, status, candidate_value, baseline_value,
                               candidate_samples, baseline_samples, limit, message,
                               _finite(interval.low) if interval else None,
                               _finite(interval.high) if interval else None,
                               allowed, "relative" if relative else "absolute")

    if candidate_samples < needed or candidate_value is None:
        return result(AMBER, None, f"{metric}: {candidate_samples} of {needed} candidate samples")
    if relative and (baseline_samples < needed or baseline_value is None):
        return result(AMBER, None, f"{metric}: {baseline_samples} of {needed} baseline samples")
    limit = threshold * baseline_value if relative else threshold
    if not math.isfinite(limit) or not math.isfinite(candidate_value):
        return result(AMBER, None, f"{metric}: the numbers are out of range; cannot judge")
    try:
        interval = _interval(kind, metric_kind, candidate, baseline)
    except (OverflowError, ValueError):  # squares of values near the float limit
        return result(AMBER, None, f"{metric}: the numbers are out of range; cannot judge")
    if interval is not None and (math.isnan(interval.low) or math.isnan(interval.high)):
        return result(AMBER, None, f"{metric}: the numbers are out of range; cannot judge")
    status = sequential.verdict(interval, allowed=allowed, higher_is_worse=higher_is_worse)
    confidence = f"with {100 * (1 - sequential.DEFAULT_ALPHA):.0f} % confidence"
    if interval is None:
        return result(AMBER, limit, f"{metric}: no interval yet (a baseline of 0 has no relative difference)")
    if relative:
        worse_allowed = allowed if higher_is_worse else -allowed
        allowance = (f"{_percent(worse_allowed)} worse allowed" if worse_allowed > 0 else
                     "no regression allowed" if worse_allowed == 0 else f"must be {_percent(worse_allowed)} better")
        text = (f"{metric} is {relative_words(interval.low, interval.high, higher_is_worse=higher_is_worse)} "
                f"than the baseline {confidence} ({allowance}): {VERDICT_WORDS[status]}")
    else:
        relation = "at most" if higher_is_worse else "at least"
        text = (f"{metric} is {_absolute_words(interval.low, interval.high)} {confidence} "
                f"({relation} {threshold:g} allowed): {VERDICT_WORDS[status]}")
    return result(status, limit, text, interval)


def compare(metric: str, *, candidate: Arm, baseline: Arm, metric_kind: str, higher_is_better: bool) -> dict[str, Any]:
    """The primary metric: the candidate against the baseline, judged by no threshold, as a
    95 % confidence sequence on the relative difference and in words. `direction` is
    "better", "worse" or "unclear" (the interval holds 0, or too few samples)."""
    samples = min(candidate.samples(metric_kind), baseline.samples(metric_kind))
    answer: dict[str, Any] = {"metric": metric, "candidate_value": candidate.point(metric_kind),
                              "baseline_value": baseline.point(metric_kind), "samples": samples,
                              "interval_low": None, "interval_high": None, "direction": "unclear"}
    if samples < MIN_SAMPLES:
        return {**answer, "message": f"{metric}: {samples} of {MIN_SAMPLES} samples in each variant; not yet clear"}
    try:
        interval = _interval("relative_max", metric_kind, candidate, baseline)
    except (OverflowError, ValueError):
        interval = None
    if interval is None or math.isnan(interval.low) or math.isnan(interval.high):
        return {**answer, "message": f"{metric}: a baseline of 0 has no relative difference"}
    worse = sequential.verdict(interval, allowed=0.0, higher_is_worse=not higher_is_better)
    direction = {RED: "worse", GREEN: "better"}.get(worse, "unclear")
    if direction == "better" and (interval.low == 0 or interval.high == 0):
        direction = "unclear"  # green's "within" includes exactly no difference
    words = relative_words(interval.low, interval.high, higher_is_worse=not higher_is_better)
    return {**answer, "interval_low": _finite(interval.low), "interval_high": _finite(interval.high),
            "direction": direction,
            "message": f"{metric} is {words} than the baseline with "
                       f"{100 * (1 - sequential.DEFAULT_ALPHA):.0f} % confidence"}


def evaluate_guardrail(guardrail: Mapping[str, Any], *, evidence: Mapping[str, Any], baseline: str, candidate: str,
                       metric_kind: str) -> GuardrailResult:
    metric = guardrail["metric"]
    return judge(guardrail, candidate=Arm.of(evidence.get(candidate), metric),
                 baseline=Arm.of(evidence.get(baseline), metric), metric_kind=metric_kind)


def evaluate_guardrails(guardrails: Sequence[Mapping[str, Any]], *, evidence: Mapping[str, Any], baseline: str,
                        candidate: str, metric_kinds: Mapping[str, str]) -> list[GuardrailResult]:
    """One result per guardrail, in order. An unregistered metric is judged like a mean."""
    return [evaluate_guardrail(g, evidence=evidence, baseline=baseline, candidate=candidate,
                               metric_kind=metric_kinds.get(g["metric"], "mean")) for g in guardrails]


def overall(results: Sequence[GuardrailResult]) -> str:
    """red if any guardrail is red, else amber if any is amber, else green (also with none)."""
    statuses = {r.status for r in results}
    return RED if RED in statuses else AMBER if AMBER in statuses else GREEN
