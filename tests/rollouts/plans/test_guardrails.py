"""Guardrail evaluation (rollouts/plans/guardrails.py, pure): each guardrail judged with an
always-valid 95 % confidence sequence, red only when the whole interval lies beyond what it
allows, green when wholly within, amber otherwise or with too few samples; the verdict in words;
thresholds out of range refused, and never judged as infinity.

The simulations go through the product's own path: each arm's evidence is what
telemetry.selectors reports (count, sum, the variance from the sums of values and squares, the
merged log-scale histogram a p95 is read from), judged by `judge` as the minute-by-minute sweep does, with the guardrail's defaults
(the module's MIN_SAMPLES and the sequences' n_target). Seeds are fixed: the figures repeat.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from rollouts.plans.guardrails import (
    AMBER,
    GREEN,
    MIN_SAMPLES,
    RED,
    Arm,
    compare,
    evaluate_guardrail,
    guardrail_problems,
    judge,
    relative_words,
)
from telemetry import histogram
from telemetry.selectors import variance
from tests.rollouts.plans.support import BASELINE, CANDIDATE, LATENCY, LATENCY_MIN_20

ALPHA = 0.05  # the guardrails' 95 % confidence


def arm(values: list[float] | np.ndarray, exposures: int | None = None) -> Arm:
    """An arm's evidence as telemetry.selectors reports it: count, sum, the variance from the
    sums of values and squares, and the merged histogram."""
    binned: dict[str, int] = {}
    for value in values:
        histogram.add(binned, float(value))
    array = np.asarray(values, dtype=float)
    with np.errstate(over="ignore"):  # squares of values near the float limit are infinite, as in the selectors
        squares = float((array ** 2).sum())
    return Arm(len(values) if exposures is None else exposures, len(values), float(array.sum()),
               variance(len(values), float(array.sum()), squares), binned)


def relative(metric_kind: str = "p95", kind: str = "relative_max", threshold: float = 1.2,
             min_samples: int = 0) -> dict[str, Any]:
    return {"metric": "latency_p95", "kind": kind, "threshold": threshold, "min_samples": min_samples}


def spread(center: float, n: int) -> list[float]:
    """n values within ±5 % of `center`, evenly spread."""
    return [center * (0.95 + 0.1 * i / (n - 1)) for i in range(n)]


@pytest.mark.parametrize(("guardrail", "candidate", "baseline", "metric_kind", "status"), [
    # p95, 600 outcomes per arm: 3 × the baseline is beyond 1.2 ×; 1.1 × is within it
    (relative(), spread(300, 600), spread(100, 600), "p95", RED),
    (relative(), [110.0] * 600, [100.0] * 600, "p95", GREEN),
    # the same regression with 40 outcomes per arm: the interval cannot exclude 1.2 × yet
    (relative(), spread(300, 40), spread(100, 40), "p95", AMBER),
    # below the guardrail's own minimum (or the module's)
    (relative(min_samples=1000), spread(300, 600), spread(100, 600), "p95", AMBER),
    (relative(), spread(300, MIN_SAMPLES - 1), spread(100, 600), "p95", AMBER),
    # means: 20 % worse with a ±5 % spread, 200 outcomes each, against 5 % allowed / 50 % allowed
    (relative("mean", threshold=1.05), spread(120, 200), spread(100, 200), "mean", RED),
    (relative("mean", threshold=1.5), spread(120, 200), spread(100, 200), "mean", GREEN),
    # "at least 0.9 × the baseline": 80 % of it is red, equal is green
    (relative("mean", "relative_min", 0.9), spread(80, 200), spread(100, 200), "mean", RED),
    (relative("mean", "relative_min", 0.9), spread(100, 200), spread(100, 200), "mean", GREEN),
    # absolute limits on the candidate alone (no baseline needed)
    ({"metric": "latency_p95", "kind": "absolute_max", "threshold": 250, "min_samples": 0},
     spread(300, 100), [], "mean", RED),
    ({"metric": "latency_p95", "kind": "absolute_min", "threshold": 50, "min_samples": 0},
     spread(60, 100), [], "mean", GREEN),
    ({"metric": "latency_p95", "kind": "absolute_max", "threshold": 101, "min_samples": 0},
     spread(100, 100), [], "mean", AMBER),  # 100 ± 5 %: its mean's interval still reaches past 101
])
def test_judge__evidence__green_amber_red(guardrail: dict[str, Any], candidate: list[float], baseline: list[float],
                                          metric_kind: str, status: str) -> None:
    result = judge(guardrail, candidate=arm(candidate), baseline=arm(baseline), metric_kind=metric_kind)
    assert result.status == status, result.message
    assert result.candidate_samples == len(candidate)
    if status != AMBER:
        # the interval decided it: wholly beyond (red) or wholly within (green) the allowed end
        worse_is_higher = guardrail["kind"].endswith("_max")
        beyond = result.interval_low > result.allowed if worse_is_higher else result.interval_high < result.allowed
        assert beyond == (status == RED)


def test_judge__relative__interval_holds_the_true_difference_and_says_it_in_words() -> None:
    # Given a candidate exactly 25 % slower than the baseline, 2,000 outcomes each (±5 % spread)
    result = judge(relative("mean"), candidate=arm(spread(125, 2000)), baseline=arm(spread(100, 2000)),
                   metric_kind="mean")
    # Then the relative interval holds +25 % and excludes the allowed +20 %
    assert result.interval_low <= 0.25 <= result.interval_high
    assert result.status == RED and result.scale == "relative" and result.allowed == pytest.approx(0.2)
    # and the message says so in words, with the confidence and what was allowed
    low, high = round(100 * result.interval_low), round(100 * result.interval_high)
    assert f"worse by {low} %–{high} %" in result.message
    assert "with 95 % confidence (20 % worse allowed): breached" in result.message
    # the point values and the limit a chart draws stay as before
    assert result.candidate_value == pytest.approx(125, rel=0.01)
    assert result.limit == pytest.approx(1.2 * result.baseline_value)


def test_judge__count_metric__events_per_exposure() -> None:
    # Given incident signals (value 1, reported only when one happens): 300 in 10,000 candidate
    # exposures against 100 in 10,000 baseline exposures, and "at most 1.5 × the baseline"
    guardrail = {"metric": "incidents", "kind": "relative_max", "threshold": 1.5, "min_samples": 0}
    result = judge(guardrail, candidate=arm([1.0] * 300, exposures=10_000),
                   baseline=arm([1.0] * 100, exposures=10_000), metric_kind="count")
    # Then samples are exposures, values are events per exposure, and tripled is red
    assert (result.candidate_samples, result.baseline_samples) == (10_000, 10_000)
    assert result.candidate_value == pytest.approx(0.03) and result.baseline_value == pytest.approx(0.01)
    assert result.status == RED, result.message


def test_relative_words__directions() -> None:
    assert relative_words(0.18, 0.31, higher_is_worse=True) == "worse by 18 %–31 %"
    assert relative_words(-0.05, -0.02, higher_is_worse=True) == "better by 2.0 %–5.0 %"
    assert relative_words(-0.03, 0.08, higher_is_worse=True) == "between 3.0 % better and 8.0 % worse"
    # higher is better (a resolution rate): a lower candidate is worse
    assert relative_words(-0.31, -0.18, higher_is_worse=False) == "worse by 18 %–31 %"
    # a ratio bounded below only by 0 and above by nothing says so
    assert relative_words(-1.0, math.inf, higher_is_worse=True) == "between any amount better and any amount worse"


def test_compare__primary_metric__better_worse_or_unclear() -> None:
    # A resolution rate (higher is better) of 60 % against 40 %, 1,000 cases each
    better = compare("resolved", candidate=arm([1.0] * 600 + [0.0] * 400), baseline=arm([1.0] * 400 + [0.0] * 600),
                     metric_kind="rate", higher_is_better=True)
    assert better["direction"] == "better" and better["interval_low"] <= 0.5 <= better["interval_high"]
    assert better["message"].startswith("resolved is better by ")
    same = compare("resolved", candidate=arm([1.0] * 500 + [0.0] * 500), baseline=arm([1.0] * 500 + [0.0] * 500),
                   metric_kind="rate", higher_is_better=True)
    assert same["direction"] == "unclear" and same["interval_low"] < 0 < same["interval_high"]
    few = compare("resolved", candidate=arm([1.0] * 5), baseline=arm([0.0] * 5), metric_kind="rate",
                  higher_is_better=True)
    assert few["direction"] == "unclear" and few["interval_low"] is None and "not yet clear" in few["message"]


def test_evaluate_guardrail__reads_the_stored_evidence() -> None:
    # The evidence dict as measurement stores it: per variant exposures and metric values
    def variant(values: list[float]) -> dict[str, Any]:
        a = arm(values)
        return {"exposures": a.exposures, "metrics": {"latency_p95": {
            "count": a.count, "sum": a.total, "variance": a.variance, "histogram": dict(a.histogram)}}}

    result = evaluate_guardrail(LATENCY, evidence={CANDIDATE: variant(spread(300, 600)),
                                                   BASELINE: variant(spread(100, 600))},
                                baseline=BASELINE, candidate=CANDIDATE, metric_kind="p95")
    assert (result.status, result.candidate_samples, result.baseline_samples) == (RED, 600, 600)
    assert result.candidate_value == pytest.approx(max(spread(300, 600)), rel=0.02)  # its p95, binned


def test_guardrail__huge_threshold__refused_and_never_judged_as_infinity() -> None:
    assert any("at most" in p for p in guardrail_problems({**LATENCY_MIN_20, "threshold": 1e308}))
    judged = judge({**LATENCY_MIN_20, "threshold": 1e300}, candidate=arm([5.0] * 50), baseline=arm([1e300] * 50),
                   metric_kind="mean")
    assert judged.status == AMBER and judged.limit is None and "out of range" in judged.message


# --- simulated traffic through the product's path ------------------------------------------------

RUNS = 1_000
MINUTES = 60
PER_MINUTE = 40  # observations per arm per minute


LOW_BIN, BINS = -40, 900  # histogram bins p-40 (about 0.45) to p859 (about 24 million): every value drawn
_LOG_GAMMA = math.log(histogram.GAMMA)


def _bins(values: np.ndarray) -> np.ndarray:
    """telemetry.histogram's bin number of each value > 0, as an index from LOW_BIN (bin p<k>
    holds (γ^(k-1), γ^k]); zeros go to the last column, the "z" bin."""
    index = np.full(values.shape, BINS, dtype=np.int64)
    positive = values > 0
    index[positive] = np.ceil(np.log(values[positive]) / _LOG_GAMMA - 1e-12).astype(np.int64) - LOW_BIN
    return index


def _histogram(counts: np.ndarray) -> dict[str, int]:
    """One run's cumulative counts as the sparse {bin: count} the selectors merge."""
    return {("z" if i == BINS else f"p{i + LOW_BIN}"): int(counts[i]) for i in np.flatnonzero(counts)}


def _ever_red(rng: np.random.Generator, guardrail: dict[str, Any], metric_kind: str, draw: Any, *,
              runs: int = RUNS, per_minute: int = PER_MINUTE) -> tuple[float, list[int]]:
    """Share of runs whose guardrail, judged every minute for an hour on the arms' cumulative
    evidence, is ever red; and the minute each turned red. `draw(rng, side, size)` gives one
    minute's values of an arm (side 0: candidate, 1: baseline)."""
    counts = np.zeros((2, runs, BINS + 1), dtype=np.int64)
    totals, squares = np.zeros((2, runs)), np.zeros((2, runs))
    red_at: list[int] = []
    open_runs = set(range(runs))
    rows = np.repeat(np.arange(runs), per_minute)
    for minute in range(1, MINUTES + 1):
        for side in (0, 1):
            values = draw(rng, side, (runs, per_minute))
            assert (_bins(values) < BINS + 1).all() and (_bins(values) >= 0).all()
            np.add.at(counts[side], (rows, _bins(values).ravel()), 1)
            totals[side] += values.sum(axis=1)
            squares[side] += (values ** 2).sum(axis=1)
        n = minute * per_minute
        for run in sorted(open_runs):
            candidate, baseline = (
                Arm(n, n, float(totals[side, run]), variance(n, float(totals[side, run]), float(squares[side, run])),
                    _histogram(counts[side, run]) if metric_kind == "p95" else None) for side in (0, 1))
            if judge(guardrail, candidate=candidate, baseline=baseline, metric_kind=metric_kind).status == RED:
                red_at.append(minute)
                open_runs.discard(run)
    return len(red_at) / runs, red_at


def _latency(factor: float) -> Any:
    def draw(rng: np.random.Generator, side: int, size: tuple[int, int]) -> np.ndarray:
        return (factor if side == 0 else 1.0) * rng.lognormal(mean=math.log(200), sigma=0.6, size=size)
    return draw


def _errors(rate: float, baseline_rate: float) -> Any:
    def draw(rng: np.random.Generator, side: int, size: tuple[int, int]) -> np.ndarray:
        return (rng.random(size) < (rate if side == 0 else baseline_rate)).astype(float)
    return draw


@pytest.mark.parametrize(("metric_kind", "draw", "seed"), [
    ("mean", _latency(1.0), 101), ("rate", _errors(0.05, 0.05), 102), ("p95", _latency(1.0), 103)])
def test_aa__judged_every_minute_for_an_hour__false_alarms_within_alpha(metric_kind: str, draw: Any,
                                                                         seed: int) -> None:
    # Given 1,000 A/A runs (candidate and baseline from the same distribution) and the strictest
    # guardrail: no regression allowed at all
    guardrail = relative(metric_kind, threshold=1.0)
    # When each is judged every minute for an hour, as the sweep does
    false_alarms, _ = _ever_red(np.random.default_rng(seed), guardrail, metric_kind, draw)
    # Then at most alpha of the runs ever turn red
    assert false_alarms <= ALPHA


@pytest.mark.parametrize(("metric_kind", "per_minute", "seed"), [("mean", PER_MINUTE, 201), ("p95", 400, 202)])
def test_ab__twenty_percent_latency_regression__caught_within_the_hour(metric_kind: str, per_minute: int,
                                                                        seed: int) -> None:
    # Given a candidate 20 % slower in every request and a guardrail allowing 5 % (a p95 needs
    # more traffic to be told apart: 400 requests a minute per arm)
    guardrail = relative(metric_kind, threshold=1.05)
    # When 200 runs are judged every minute for an hour
    caught, minutes = _ever_red(np.random.default_rng(seed), guardrail, metric_kind, _latency(1.2), runs=200,
                                per_minute=per_minute)
    # Then nearly every run turns red within the hour
    assert caught >= 0.95
    assert max(minutes) <= MINUTES


def test_judge__relative_min__lower_is_worse_in_words() -> None:
    # "at least 0.9 × the baseline" on a resolution rate: 50 % against 80 %, 1,000 cases each
    result = judge({"metric": "resolved", "kind": "relative_min", "threshold": 0.9, "min_samples": 0},
                   candidate=arm([1.0] * 500 + [0.0] * 500), baseline=arm([1.0] * 800 + [0.0] * 200),
                   metric_kind="rate")
    # Then the candidate is worse (lower) by about 37.5 %, beyond the 10 % allowed
    assert result.status == RED and result.allowed == pytest.approx(-0.1)
    assert result.interval_low <= 0.5 / 0.8 - 1 <= result.interval_high
    assert "resolved is worse by " in result.message and "(10 % worse allowed): breached" in result.message


def test_relative_words__an_end_at_no_difference() -> None:
    assert relative_words(-0.0001, 0.04, higher_is_worse=True) == "between no difference and 4.0 % worse"
    assert relative_words(-0.04, 0.0002, higher_is_worse=True) == "between 4.0 % better and no difference"
