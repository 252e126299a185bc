"""Sequential statistics (rollouts/plans/sequential.py) on simulated traffic of known effect.

A/A: candidate and baseline drawn from the same distribution, a guardrail allowing no
regression at all (the strictest), checked every minute for an hour: over 1,000 runs the share
of runs that ever turn red stays at or below alpha, where a fixed-sample 95 % interval checked
the same way does not (which shows the simulation can tell). A/B: a 20 % latency regression
against a guardrail allowing 5 % turns red within the hour in nearly every run. SRM: a split
that serves 52/48 while configured 50/50 is caught; a correct split almost never is.

Traffic: each minute each arm gets PER_MINUTE observations; checks start once each arm has
MIN_SAMPLES (the guardrail's minimum). Seeds are fixed, so the figures are repeatable.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rollouts.plans import sequential
from rollouts.plans.sequential import AMBER, GREEN, RED, Summary
from telemetry.histogram import GAMMA

ALPHA = 0.05
RUNS = 1_000
MINUTES = 60
PER_MINUTE = 40
MIN_SAMPLES = 100
N_TARGET = 2 * PER_MINUTE * MINUTES  # tightest at the end of the hour


def _latencies(rng: np.random.Generator, shape: tuple[int, ...], factor: float = 1.0) -> np.ndarray:
    return factor * rng.lognormal(mean=math.log(200), sigma=0.6, size=shape)


def _ever_red_means(rng: np.random.Generator, *, candidate_factor: float, allowed: float,
                    interval: str = "sequential") -> tuple[float, list[int]]:
    """Share of runs whose relative-mean guardrail is ever red, and the minute each turned red."""
    sums = np.zeros((2, RUNS))
    squares = np.zeros((2, RUNS))
    red_at = np.full(RUNS, -1)
    z = stats.norm.ppf(1 - ALPHA / 2)
    for minute in range(1, MINUTES + 1):
        for arm, factor in ((0, candidate_factor), (1, 1.0)):
            values = _latencies(rng, (RUNS, PER_MINUTE), factor)
            sums[arm] += values.sum(axis=1)
            squares[arm] += (values ** 2).sum(axis=1)
        n = minute * PER_MINUTE
        if n < MIN_SAMPLES:
            continue
        for run in np.flatnonzero(red_at < 0):
            candidate = Summary.from_sums(n, sums[0, run], squares[0, run])
            baseline = Summary.from_sums(n, sums[1, run], squares[1, run])
            if interval == "sequential":
                found = sequential.difference_interval(candidate, baseline, relative=True, alpha=ALPHA,
                                                       n_target=N_TARGET)
            else:  # a fixed-sample interval, as if each look were the only one
                estimate = candidate.mean / baseline.mean - 1
                se = math.sqrt(candidate.variance / (n * baseline.mean ** 2)
                               + candidate.mean ** 2 * baseline.variance / (n * baseline.mean ** 4))
                found = sequential.Interval(estimate - z * se, estimate + z * se)
            if sequential.verdict(found, allowed=allowed, higher_is_worse=True) == RED:
                red_at[run] = minute
    return float((red_at >= 0).mean()), [int(m) for m in red_at if m >= 0]


def test_aa_means__checked_every_minute__false_alarms_stay_within_alpha() -> None:
    # Given 1,000 A/A runs (no effect) against a guardrail that allows no regression
    rng = np.random.default_rng(20261203)
    # When the sequential interval is checked every minute for an hour
    false_alarms, _ = _ever_red_means(rng, candidate_factor=1.0, allowed=0.0)
    # Then at most alpha of the runs ever turn red
    assert false_alarms <= ALPHA


def test_aa_means__a_fixed_interval_checked_every_minute__exceeds_alpha() -> None:
    # The same traffic judged with a fixed-sample 95 % interval at every look: peeking inflates
    # false alarms well past alpha / 2 (its one-sided share), which is what the sequential one prevents
    rng = np.random.default_rng(20261203)
    false_alarms, _ = _ever_red_means(rng, candidate_factor=1.0, allowed=0.0, interval="fixed")
    assert false_alarms > ALPHA / 2 * 2


def test_ab_means__twenty_percent_latency_regression__caught_within_the_hour() -> None:
    # Given a candidate 20 % slower and a guardrail allowing 5 %
    rng = np.random.default_rng(7)
    caught, minutes = _ever_red_means(rng, candidate_factor=1.2, allowed=0.05)
    # Then nearly every run turns red, and before the hour is out
    assert caught >= 0.95
    assert max(minutes) <= MINUTES


def _ever_red_rates(rng: np.random.Generator, *, candidate_rate: float, baseline_rate: float,
                    allowed: float) -> float:
    red = np.zeros(RUNS, dtype=bool)
    successes = np.zeros((2, RUNS))
    for minute in range(1, MINUTES + 1):
        successes[0] += rng.binomial(PER_MINUTE, candidate_rate, size=RUNS)
        successes[1] += rng.binomial(PER_MINUTE, baseline_rate, size=RUNS)
        n = minute * PER_MINUTE
        if n < MIN_SAMPLES:
            continue
        for run in np.flatnonzero(~red):
            arms = [Summary(n, successes[arm, run] / n, (successes[arm, run] / n) * (1 - successes[arm, run] / n))
                    for arm in (0, 1)]
            found = sequential.difference_interval(arms[0], arms[1], relative=False, alpha=ALPHA,
                                                   n_target=N_TARGET)
            red[run] = sequential.verdict(found, allowed=allowed, higher_is_worse=True) == RED
    return float(red.mean())


def test_aa_rates__checked_every_minute__false_alarms_stay_within_alpha() -> None:
    # Given an error rate of 5 % in both arms and a guardrail allowing no increase
    rng = np.random.default_rng(11)
    assert _ever_red_rates(rng, candidate_rate=0.05, baseline_rate=0.05, allowed=0.0) <= ALPHA


def test_ab_rates__doubled_error_rate__caught() -> None:
    rng = np.random.default_rng(12)
    assert _ever_red_rates(rng, candidate_rate=0.10, baseline_rate=0.05, allowed=0.01) >= 0.95


# --- p95 from histograms -------------------------------------------------------------------------

P95_RUNS = 1_000
_LOG_GAMMA = math.log(GAMMA)


def _binned(values: np.ndarray) -> np.ndarray:
    """telemetry.histogram's bin number k of each positive value (bin p<k> holds (γ^(k-1), γ^k])."""
    return np.ceil(np.log(values) / _LOG_GAMMA - 1e-12).astype(np.int64)


def _ever_red_p95(rng: np.random.Generator, *, candidate_factor: float, allowed_ratio: float,
                  runs: int = P95_RUNS, every: int = 1, per_minute: int = PER_MINUTE) -> tuple[float, float]:
    """Share of runs ever red, and share green at the end, for a relative_max p95 guardrail."""
    low_bin = int(_binned(np.array([1.0]))[0])
    width = 800  # bins from 1 ms to about 7 s: lognormal(200 ms, 0.6) stays inside
    counts = np.zeros((2, runs, width), dtype=np.int64)
    red = np.zeros(runs, dtype=bool)
    green_at_end = np.zeros(runs, dtype=bool)
    for minute in range(1, MINUTES + 1):
        for arm, factor in ((0, candidate_factor), (1, 1.0)):
            bins = np.clip(_binned(_latencies(rng, (runs, per_minute), factor)) - low_bin, 0, width - 1)
            rows = np.repeat(np.arange(runs), per_minute)
            np.add.at(counts[arm], (rows, bins.ravel()), 1)
        if minute * per_minute < MIN_SAMPLES or (minute % every and minute != MINUTES):
            continue
        for run in range(runs):
            if red[run] and minute != MINUTES:
                continue
            histograms = []
            for arm in (0, 1):
                present = np.flatnonzero(counts[arm, run])
                histograms.append({f"p{int(k) + low_bin}": int(counts[arm, run, k]) for k in present})
            found = sequential.quantile_ratio_interval(histograms[0], histograms[1], 0.95, alpha=ALPHA,
                                                       n_target=N_TARGET)
            status = sequential.verdict(found, allowed=allowed_ratio, higher_is_worse=True)
            red[run] |= status == RED
            if minute == MINUTES:
                green_at_end[run] = status == GREEN
    return float(red.mean()), float(green_at_end.mean())


def test_aa_p95__checked_every_minute__false_alarms_stay_within_alpha() -> None:
    # Given A/A latency and a p95 guardrail allowing no regression (ratio 1.0)
    rng = np.random.default_rng(13)
    false_alarms, _ = _ever_red_p95(rng, candidate_factor=1.0, allowed_ratio=1.0)
    assert false_alarms <= ALPHA


def test_ab_p95__twenty_percent_latency_regression__caught() -> None:
    # Given a candidate 20 % slower at every percentile and a p95 guardrail allowing 5 %, at
    # 400 requests a minute per arm (a tail needs more traffic than a mean to be judged)
    rng = np.random.default_rng(14)
    caught, _ = _ever_red_p95(rng, candidate_factor=1.2, allowed_ratio=1.05, runs=200, every=5, per_minute=400)
    assert caught >= 0.9


def test_p95_no_regression_against_a_generous_guardrail__turns_green() -> None:
    # A/A against "p95 at most 1.3 × the baseline": the interval ends up inside the allowance
    rng = np.random.default_rng(15)
    _, green = _ever_red_p95(rng, candidate_factor=1.0, allowed_ratio=1.3, runs=200, every=10)
    assert green >= 0.9


def test_quantile_interval__contains_the_true_quantile_and_narrows_with_samples() -> None:
    rng = np.random.default_rng(16)
    true_p95 = math.exp(math.log(200) + 0.6 * stats.norm.ppf(0.95))
    widths = []
    for n in (200, 2_000, 20_000):
        bins = _binned(_latencies(rng, (n,)))
        keys, counts = np.unique(bins, return_counts=True)
        found = sequential.quantile_interval({f"p{k}": int(c) for k, c in zip(keys, counts, strict=True)}, 0.95)
        assert found is not None and found.contains(true_p95)
        widths.append(found.high - found.low)
    assert widths[0] > widths[1] > widths[2]


# --- verdicts, the boundary, SRM, duration -----------------------------------------------------------


@pytest.mark.parametrize(("low", "high", "higher_is_worse", "expected"), [
    (0.10, 0.30, True, RED), (-0.02, 0.04, True, GREEN), (0.00, 0.08, True, AMBER),
    (-0.30, -0.10, False, RED), (-0.04, 0.02, False, GREEN), (-0.08, 0.00, False, AMBER),
])
def test_verdict__red_only_beyond_the_allowance_green_only_within(low, high, higher_is_worse, expected) -> None:
    allowed = 0.05 if higher_is_worse else -0.05
    assert sequential.verdict(sequential.Interval(low, high), allowed=allowed,
                              higher_is_worse=higher_is_worse) == expected


def test_verdict__without_an_interval__is_amber() -> None:
    assert sequential.verdict(None, allowed=0.05, higher_is_worse=True) == AMBER


def test_boundary__wider_than_a_fixed_interval_everywhere_and_shrinking() -> None:
    z = stats.norm.ppf(1 - ALPHA / 2)
    previous = math.inf
    for n in (10, 100, 1_000, 10_000, 100_000, 1_000_000):
        width = sequential.boundary(n, ALPHA, 10_000)
        assert width > z / math.sqrt(n)  # the price of looking at every n
        assert width < previous
        previous = width


def test_sample_ratio__broken_split_detected_and_a_fair_one_rarely_flagged() -> None:
    rng = np.random.default_rng(17)
    weights = {"baseline_v3": 50_000, "citation_first_v4": 50_000}
    # A split that serves 52/48 while configured 50/50, 20,000 exposures
    broken = rng.binomial(20_000, 0.52)
    found = sequential.sample_ratio({"citation_first_v4": broken, "baseline_v3": 20_000 - broken}, weights)
    assert found is not None and found.mismatch and found.p_value < sequential.SRM_P_VALUE
    assert found.expected_share == {"baseline_v3": 0.5, "citation_first_v4": 0.5}
    # A fair split: flagged in about 0.1 % of runs
    flagged = 0
    for _ in range(2_000):
        fair = int(rng.binomial(20_000, 0.5))
        flagged += sequential.sample_ratio({"citation_first_v4": fair, "baseline_v3": 20_000 - fair}, weights).mismatch
    assert flagged / 2_000 <= 0.005


def test_sample_ratio__needs_two_weighted_variants_and_exposures() -> None:
    assert sequential.sample_ratio({"a": 10}, {"a": 100_000}) is None
    assert sequential.sample_ratio({}, {"a": 50_000, "b": 50_000}) is None


def test_units_needed__the_first_total_whose_half_width_fits_the_allowance() -> None:
    needed = sequential.units_needed(allowed_relative=0.2, coefficient_of_variation=0.65, candidate_share=0.5,
                                     n_target=N_TARGET)
    assert needed is not None

    def half_width(total: int) -> float:
        return math.sqrt(total * (0.65 ** 2 / (total / 2) * 2)) * sequential.boundary(total, 0.05, N_TARGET)

    assert half_width(needed) <= 0.2 < half_width(needed - 1)
    tighter = sequential.units_needed(allowed_relative=0.05, coefficient_of_variation=0.65, candidate_share=0.5,
                                      n_target=N_TARGET)
    assert tighter is not None and tighter > needed
    assert sequential.units_needed(allowed_relative=0.0, coefficient_of_variation=0.65, candidate_share=0.5) is None
