"""How long a stage needs: for each guardrail of a plan being drawn up, the time the stage
must run, at the traffic of the last 7 days, before its guardrail can tell the regression it
allows from none. The plan form (rollouts/plans/views.py `plan_create`) shows it beside each
stage.

One read (`recent_traffic`: telemetry.selectors.evidence over the last 7 days, its fixed four
queries for the whole form, however many stages and guardrails), the rest pure.

**The traffic.** Every variant's outcomes in the last 7 days are pooled: before a rollout
nearly all of them are the baseline's, and the question is about the metric's spread, not
about a difference. The rate of observations reaching the flag (outcome events per hour; for a
count metric, exposures per hour, as a count guardrail's samples are exposures) is the 7-day
total over 168 hours. A stage splitting by percentage sends that share of what reaches its
split to the candidate and the rest to the baseline (the units of its segments come on top,
which only shortens the wait); a stage that only names segments sends an unknown share, so it
says so instead of guessing.

**The observations needed** (both arms together), in the no-regression case (the candidate
like the baseline), with the same 95 % confidence sequences the guardrails are judged with
(rollouts/plans/sequential.py, guardrails.py):

- relative mean, rate or count guardrail: `sequential.units_needed`, with the metric's
  coefficient of variation sqrt(variance) / mean from the recent data (a rate: sqrt(p(1 − p)) / p;
  a count: per exposure) and the allowed regression threshold − 1 (`relative_max`) or
  1 − threshold (`relative_min`). By then the interval on candidate / baseline − 1 is narrower
  than what is allowed: green with no regression, red with twice the allowed.
- absolute guardrail on a mean, rate or count: the smallest candidate sample n (the share of
  the total, rounded) with the half-width of `sequential.mean_interval`, sigma × boundary(n), at
  most |limit − current value|: by then the interval sits on one side of the limit (green, or red when the current
  value is already past it).
- p95 guardrail: bisection on n. The recent merged histogram is scaled to each arm's sample
  (share × n for the candidate, the rest for the baseline: the same distribution in both, the
  no-regression case) and `sequential.quantile_ratio_interval` is computed on the two; the
  answer is the smallest n whose interval's high end is at most the threshold (`relative_max`;
  its low end at least the threshold for `relative_min`). An absolute p95 guardrail does the
  same with `sequential.quantile_interval` on the candidate's scaled histogram against the
  limit. Scaling rounds each bin's count, and binning widens the interval by a bin (2 %), so a
  threshold within 2 % of 1 is never reached.
- never fewer than the guardrail's own minimum (`min_samples`, at least
  guardrails.MIN_SAMPLES) on the candidate and, for a relative guardrail, on the baseline.

Observations become hours at the stage's share of the recent rate; beyond 30 days the answer
is "more than 30 days".
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from rollouts.plans import sequential
from rollouts.plans.guardrails import MIN_SAMPLES, Arm
from telemetry import histogram as histograms
from telemetry.selectors import evidence

WINDOW = datetime.timedelta(days=7)
WINDOW_HOURS = WINDOW.total_seconds() / 3600
HORIZON_DAYS = 30
HORIZON_HOURS = HORIZON_DAYS * 24
TRAFFIC_WORDS = "at the traffic of the last 7 days"


@dataclass(frozen=True)
class Traffic:
    """The last 7 days of a flag in one environment: per metric key, every variant pooled."""

    arms: Mapping[str, Arm]
    hours: float = WINDOW_HOURS

    def arm(self, metric: str) -> Arm:
        return self.arms.get(metric) or Arm()


def pooled(variants: Mapping[str, Any], metric: str) -> Arm:
    """Every variant's evidence for `metric` as one arm: counts and sums added, the variance of
    the pooled values (each variant's spread plus the spread of its mean around the pooled
    mean), the histograms merged."""
    arms = [Arm.of(variant, metric) for variant in variants.values()]
    exposures, count = sum(a.exposures for a in arms), sum(a.count for a in arms)
    total = math.fsum(a.total for a in arms)
    merged = histograms.merge(a.histogram for a in arms if a.histogram)
    if count <= 0:
        return Arm(exposures, 0, 0.0, None, merged or None)
    mean = total / count
    # products, not powers: values near the float limit make infinities here, not an OverflowError
    squares = sum(a.count * ((a.variance or 0.0) + (a.total / a.count) * (a.total / a.count))
                  for a in arms if a.count > 0)
    spread = squares / count - mean * mean
    return Arm(exposures, count, total, max(spread, 0.0) if math.isfinite(spread) else None, merged or None)


def recent_traffic(*, flag_id: int, environment_id: int, metric_keys: Sequence[str],
                   now: datetime.datetime | None = None) -> Traffic:
    """The last 7 days' evidence of the flag in the environment, pooled per metric: one
    `evidence` read (four queries)."""
    now = now or timezone.now()
    variants = evidence(flag_id=flag_id, environment_id=environment_id, start=now - WINDOW, end=now,
                        metric_keys=sorted(set(metric_keys)))
    return Traffic({key: pooled(variants, key) for key in set(metric_keys)})


# --- words ---------------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return f"{value * 100:.3g} %"


def allowance_words(kind: str, threshold: float) -> str:
    """What a guardrail allows, as a person says it: "at most 20 % worse" (`relative_max` 1.2:
    higher is worse), "at most 10 % worse" (`relative_min` 0.9: lower is worse), "at most 250"."""
    if kind.startswith("relative"):
        worse = threshold - 1 if kind == "relative_max" else 1 - threshold
        if worse > 0:
            return f"at most {_percent(worse)} worse"
        return "no worse than the baseline" if worse == 0 else f"at least {_percent(-worse)} better"
    return f"at most {threshold:g}" if kind == "absolute_max" else f"at least {threshold:g}"


def about(number: float) -> str:
    """A figure to two significant digits, with thousands separators: 1,900; 71; 0.5."""
    if number >= 100:
        digits = int(math.floor(math.log10(number))) + 1
        return f"{round(number, 2 - digits):,.0f}"
    return f"{number:.2g}"


def duration_words(hours: float) -> str:
    """'about 40 min', 'about 3 h', 'about 5 days'."""
    minutes = hours * 60
    if minutes < 90:
        return f"about {max(1, round(minutes))} min"
    if hours < 48:
        return f"about {round(hours)} h"
    return f"about {round(hours / 24)} days"


def bake_words(minutes: int | None) -> str:
    """A bake time as set: '90 min', '24 h', '3 days', 'none'."""
    if not minutes:
        return "none"
    if minutes % (24 * 60) == 0:
        return f"{minutes // (24 * 60)} day{'s' if minutes > 24 * 60 else ''}"
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


# --- the observations a guardrail needs ----------------------------------------------------------


def _smallest(holds: Callable[[int], bool], low: int, high: int) -> int | None:
    """The smallest n in [low, high] for which `holds(n)` (taken as monotone), or None."""
    if high < low or not holds(high):
        return None
    while low < high:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle + 1
    return low


def scaled(histogram: Mapping[str, int], n: float) -> dict[str, int]:
    """The histogram's shape with about n values in all (each bin's count rounded)."""
    total = sum(histogram.values())
    factor = n / total if total else 0.0
    return {name: round(count * factor) for name, count in histogram.items() if round(count * factor) > 0}


@dataclass(frozen=True)
class Need:
    """Observations reaching the stage's split (both arms) before the guardrail can tell, or
    why there is no such number (`problem`; `beyond` when more than the horizon holds)."""

    observations: int | None = None
    problem: str = ""
    beyond: bool = False
    note: str = ""


def observations_needed(guardrail: Mapping[str, Any], *, metric_kind: str, recent: Arm, share: float,
                        limit: int) -> Need:
    """The observations (both arms) the stage needs for this guardrail (module docstring), at
    most `limit`; `share` is the candidate's share of them, 0 < share ≤ 1."""
    metric, kind = guardrail["metric"], guardrail["kind"]
    threshold = float(guardrail["threshold"])
    relative = kind.startswith("relative")
    unit = "exposures" if metric_kind == "count" else "outcomes"
    if relative and share >= 1:
        return Need(problem="everyone gets the candidate here: no baseline is left to compare with "
                            "(this guardrail is judged at the earlier stages)")
    if relative and (threshold - 1 if kind == "relative_max" else 1 - threshold) <= 0:
        return Need(problem="it allows no regression at all, so with none it never turns green: cannot estimate")
    least = max(int(guardrail.get("min_samples") or 0), MIN_SAMPLES)
    floor = max(math.ceil(least / share), math.ceil(least / (1 - share)) if relative else 0, 2)
    limit = max(limit, 2)
    if metric_kind == "p95":
        found = _p95_needed(kind, threshold, recent.histogram or {}, share, floor, limit)
    else:
        summary = recent.summary(metric_kind)
        if summary.n <= 0:
            return Need(problem=f"no {metric} {unit} in the last 7 days: cannot estimate")
        found = (_relative_needed(kind, threshold, summary, share, limit, metric) if relative
                 else _absolute_needed(kind, threshold, summary, share, floor, limit, metric))
    if found.observations is None:
        return found
    return Need(max(found.observations, floor), note=found.note)


def _relative_needed(kind: str, threshold: float, summary: sequential.Summary, share: float, limit: int,
                     metric: str) -> Need:
    if abs(summary.mean) < 1e-12:
        return Need(problem=f"{metric} was 0 over the last 7 days: a relative limit on 0 cannot be judged")
    allowed = threshold - 1 if kind == "relative_max" else 1 - threshold
    found = sequential.units_needed(allowed_relative=allowed, candidate_share=share, limit=limit,
                                    coefficient_of_variation=math.sqrt(summary.variance) / abs(summary.mean))
    return Need(found, beyond=found is None)


def _absolute_needed(kind: str, threshold: float, summary: sequential.Summary, share: float, floor: int,
                     limit: int, metric: str) -> Need:
    gap = abs(threshold - summary.mean)
    if gap <= 0:
        return Need(problem=f"{metric} sits right at the limit ({threshold:g}): it never comes clear of it")
    past = summary.mean > threshold if kind == "absolute_max" else summary.mean < threshold

    def holds(total: int) -> bool:
        interval = sequential.mean_interval(sequential.Summary(round(share * total), summary.mean, summary.variance))
        return interval.high - summary.mean <= gap

    found = _smallest(holds, floor, limit)
    note = f"already past the limit (now {summary.mean:.4g}): this is how long it takes to turn red" if past else ""
    return Need(found, beyond=found is None, note=note)


def _p95_needed(kind: str, threshold: float, recent: Mapping[str, int], share: float, floor: int,
                limit: int) -> Need:
    if sum(recent.values()) <= 0:
        return Need(problem="no histogram of its values in the last 7 days: cannot estimate")
    if kind.startswith("relative"):
        def holds(total: int) -> bool:
            ratio = sequential.quantile_ratio_interval(scaled(recent, share * total), scaled(recent, (1 - share) * total))
            if ratio is None:
                return False
            return ratio.high <= threshold if kind == "relative_max" else ratio.low >= threshold
        found = _smallest(holds, floor, limit)
        return Need(found, beyond=found is None)
    current = histograms.percentile(recent, 0.95) or 0.0
    past = current > threshold if kind == "absolute_max" else current < threshold

    def holds_absolute(total: int) -> bool:
        interval = sequential.quantile_interval(scaled(recent, share * total))
        if interval is None:
            return False
        if kind == "absolute_max":
            return interval.low > threshold if past else interval.high <= threshold
        return interval.high < threshold if past else interval.low >= threshold

    found = _smallest(holds_absolute, floor, limit)
    note = f"already past the limit (now about {current:.4g}): this is how long it takes to turn red" if past else ""
    return Need(found, beyond=found is None, note=note)


# --- a stage's estimates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """One guardrail at one stage, in words: `headline` ("about 3 h", "more than 30 days", or
    why it cannot be estimated) and `detail` (the traffic behind it)."""

    metric: str
    allowance: str
    headline: str
    detail: str = ""
    hours: float | None = None
    observations: int | None = None
    longer_than_bake: bool = False
    bake: str = ""  # the stage's bake time in words ("3 days"), when the estimate is longer


@dataclass(frozen=True)
class StageEstimate:
    """A stage's estimates; `problem` when none can be made for the whole stage."""

    share: float | None
    estimates: list[Estimate] = field(default_factory=list)
    problem: str = ""


def stage_share(percentage: float, segments: Sequence[str]) -> float | None:
    """The candidate's share of the traffic reaching the stage's split: the percentage; None for
    a stage that only names segments (how many units they hold is not known beforehand)."""
    if percentage > 0:
        return min(percentage / 100, 1.0)
    return None if segments else 0.0


def guardrail_estimate(guardrail: Mapping[str, Any], *, metric_kind: str, recent: Arm, hours: float, share: float,
                       has_segments: bool = False, bake_minutes: int | None = None) -> Estimate:
    """How long a stage sending `share` of the traffic to the candidate needs for one guardrail."""
    metric = guardrail["metric"]
    allowance = allowance_words(guardrail["kind"], float(guardrail["threshold"]))
    unit = "exposures" if metric_kind == "count" else "outcomes"
    per_hour = recent.samples(metric_kind) / hours if hours > 0 else 0.0
    if per_hour <= 0:
        what = "no traffic" if recent.exposures <= 0 else f"no {metric} {unit}"
        return Estimate(metric, allowance, f"{what} in the last 7 days: cannot estimate")
    sent = "all of them" if share >= 1 else f"{_percent(share)} of them"
    detail = (f"≈ {about(per_hour * 24)} {unit} a day reach this flag; this stage sends {sent} to the candidate"
              + (", plus its segments' units" if has_segments and share < 1 else ""))
    try:
        need = observations_needed(guardrail, metric_kind=metric_kind, recent=recent, share=share,
                                   limit=math.ceil(per_hour * HORIZON_HOURS))
    except (OverflowError, ValueError):  # recent values near the float limit
        return Estimate(metric, allowance, f"the recent {metric} values are too large to estimate from", detail)
    if need.problem:
        return Estimate(metric, allowance, need.problem)
    if need.observations is None:
        return Estimate(metric, allowance, f"more than {HORIZON_DAYS} days {TRAFFIC_WORDS}", detail)
    needed_hours = need.observations / per_hour
    if needed_hours > HORIZON_HOURS:
        return Estimate(metric, allowance, f"more than {HORIZON_DAYS} days {TRAFFIC_WORDS}", detail)
    detail = f"{detail}; {need.note}" if need.note else detail
    longer = bake_minutes is not None and needed_hours * 60 > bake_minutes
    return Estimate(metric, allowance, f"{duration_words(needed_hours)} {TRAFFIC_WORDS}", detail, needed_hours,
                    need.observations, longer, bake_words(bake_minutes) if longer else "")


def stage_estimates(stages: Sequence[Mapping[str, Any] | None], guardrails: Sequence[Mapping[str, Any]], *,
                    traffic: Traffic, metric_kinds: Mapping[str, str]) -> list[StageEstimate | None]:
    """Each stage's estimates, in order (None for a stage row that is blank or does not parse).
    A stage is {"percentage": percent of everyone else, "segments": [...], "min_bake_minutes"};
    a guardrail {metric, kind, threshold, min_samples}. Stages with the same share share the work."""
    answers: list[StageEstimate | None] = []
    cache: dict[tuple[Any, ...], Estimate] = {}
    for stage in stages:
        if stage is None:
            answers.append(None)
            continue
        segments = list(stage.get("segments") or [])
        share = stage_share(float(stage.get("percentage") or 0), segments)
        if share is None:
            answers.append(StageEstimate(None, problem=(
                f"Depends on how many units {', '.join(segments)} hold, which is not known before the stage runs: "
                "cannot estimate a time")))
            continue
        if share <= 0:
            answers.append(StageEstimate(0.0, problem="This stage sends nothing to the candidate: nothing to judge."))
            continue
        bake = stage.get("min_bake_minutes")
        estimates = []
        for guardrail in guardrails:
            metric = guardrail["metric"]
            key = (metric, guardrail["kind"], float(guardrail["threshold"]), guardrail.get("min_samples"), share,
                   bool(segments), bake)
            if key not in cache:
                cache[key] = guardrail_estimate(guardrail, metric_kind=metric_kinds.get(metric, "mean"),
                                                recent=traffic.arm(metric), hours=traffic.hours, share=share,
                                                has_segments=bool(segments), bake_minutes=bake)
            estimates.append(cache[key])
        answers.append(StageEstimate(share, estimates))
    return answers


def plan_form_estimates(*, flag_id: int, environment_id: int, stages: Sequence[Mapping[str, Any] | None],
                        guardrails: Sequence[Mapping[str, Any]], metric_kinds: Mapping[str, str],
                        now: datetime.datetime | None = None) -> list[StageEstimate | None]:
    """The plan form's estimates: one read of the last 7 days (none without guardrails or stages)."""
    if not guardrails or not any(stages):
        return [None for _ in stages]
    traffic = recent_traffic(flag_id=flag_id, environment_id=environment_id,
                             metric_keys=[g["metric"] for g in guardrails], now=now)
    return stage_estimates(stages, guardrails, traffic=traffic, metric_kinds=metric_kinds)
