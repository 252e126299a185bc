"""Sequential statistics for release decisions: intervals that stay valid however often they are
looked at, the verdict they give a guardrail, sample-ratio checks, and how long a stage needs.

Pure: numbers in, numbers out; numpy and scipy, no Django, no queries. The guardrails
(rollouts/plans/guardrails.py), the plan's evidence (rollouts/plans/measurement.py: the primary
metric, the sample-ratio check), the charts' bands and the plan form's estimate of how long a
stage needs read it.

**Why sequential.** A guardrail is checked every minute. A fixed-sample 95 % interval looked at
60 times an hour is wrong far more often than 5 % of the time. A *confidence sequence* holds at
every sample size at once with probability 1 - alpha, so checking it every minute, forever,
costs nothing in validity.

**Means and rates: asymptotic confidence sequences.** For the mean of n i.i.d. observations
with standard deviation sigma, the two-sided normal-mixture boundary of Robbins, in the
time-uniform central-limit form of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences", Annals of Statistics
52(6), 2024 (arXiv:2103.06476), Theorem 2.2 and its tuning in Section 2.4:

    mean_n  ±  sigma_n * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) )
    rho^2 = ( -2 log alpha + log(-2 log alpha + 1) ) / n_target

`n_target` only chooses the sample size at which the interval is tightest; validity holds at
every n. A difference of two independent means (candidate - baseline) is treated as the mean of
N = n_c + n_b pseudo-observations with variance N * (s_c^2 / n_c + s_b^2 / n_b), the same
construction GrowthBook documents for its sequential engine. A relative difference
(candidate / baseline - 1) uses the delta method for that variance:
s_c^2 / (n_c m_b^2) + m_c^2 s_b^2 / (n_b m_b^4). Rates are means of 0/1 outcomes.

**p95: quantile confidence sequences.** After Howard & Ramdas, "Sequential estimation of
quantiles with applications to A/B-testing and best-arm identification", Bernoulli 28(3), 2022:
at the true q-quantile xi, 1{X <= xi} is a Bernoulli(q) variable, so a confidence sequence
|F_n(xi) - q| <= w_n (the boundary above with sigma^2 = q (1 - q)) inverts into
[ F_n^-1(q - w_n), F_n^-1(q + w_n) ] for xi (upper end: the smallest x with F_n(x) > q + w_n).
From our log-scale histograms (telemetry.histogram) the lower end takes its bin's lower edge
and the upper end its bin's upper edge, so binning only widens the interval. The ratio of two
p95s is bounded by [c_lo / b_hi, c_hi / b_lo] with each quantile interval at alpha / 2
(Bonferroni), valid at alpha in all.

**Verdicts.** A guardrail allows some regression (`relative_max` 1.2: the candidate at most 20 %
worse than the baseline). It is red only when the whole interval lies beyond what is allowed,
green when the whole interval lies within it, amber otherwise (and while there are fewer samples
than the guardrail's minimum: the asymptotic boundary needs some data to be accurate).

**Sample ratio mismatch.** Exposure counts per variant against the split's weights, Pearson's
chi-square test (scipy.stats.chisquare); p < 0.001 marks the split as broken.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from telemetry.histogram import GAMMA, bin_order

GREEN, AMBER, RED = "green", "amber", "red"
DEFAULT_ALPHA = 0.05
DEFAULT_N_TARGET = 1_000  # tightest around a thousand samples: a stage's first hours
SRM_P_VALUE = 0.001


@dataclass(frozen=True)
class Summary:
    """One arm's observations: how many, their mean, their variance (population form)."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        array = np.asarray(values, dtype=float)
        return cls(int(array.size), float(array.mean()) if array.size else 0.0,
                   float(array.var()) if array.size else 0.0)

    @classmethod
    def from_sums(cls, n: int, total: float, total_squares: float) -> Summary:
        if n <= 0:
            return cls(0, 0.0, 0.0)
        mean = total / n
        return cls(n, mean, max(total_squares / n - mean * mean, 0.0))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _rho_squared(alpha: float, n_target: float) -> float:
    log_term = -2 * math.log(alpha)
    return (log_term + math.log(log_term + 1)) / n_target


def boundary(n: float, alpha: float = DEFAULT_ALPHA, n_target: float = DEFAULT_N_TARGET) -> float:
    """The half-width of the confidence sequence for a mean of n observations of unit standard
    deviation (multiply by sigma). Infinite for n <= 0."""
    if n <= 0:
        return math.inf
    rho2 = _rho_squared(alpha, n_target)
    return math.sqrt(2 * (n * rho2 + 1) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha))


def mean_interval(arm: Summary, *, alpha: float = DEFAULT_ALPHA, n_target: float = DEFAULT_N_TARGET) -> Interval:
    half = math.sqrt(arm.variance) * boundary(arm.n, alpha, n_target)
    return Interval(arm.mean - half, arm.mean + half)


def difference_interval(candidate: Summary, baseline: Summary, *, relative: bool, alpha: float = DEFAULT_ALPHA,
                        n_target: float = DEFAULT_N_TARGET) -> Interval | None:
    """Candidate - baseline (or candidate / baseline - 1 when `relative`); None until both arms
    have observations (and, relative, a baseline mean away from zero)."""
    if candidate.n <= 0 or baseline.n <= 0:
        return None
    total = candidate.n + baseline.n
    if relative:
        if abs(baseline.mean) < 1e-12:
            return None
        estimate = candidate.mean / baseline.mean - 1
        variance = (candidate.variance / (candidate.n * baseline.mean ** 2)
                    + candidate.mean ** 2 * baseline.variance / (baseline.n * baseline.mean ** 4))
    else:
        estimate = candidate.mean - baseline.mean
        variance = candidate.variance / candidate.n + baseline.variance / baseline.n
    half = math.sqrt(total * variance) * boundary(total, alpha, n_target)
    return Interval(estimate - half, estimate + half)


# --- quantiles from histograms -----------------------------------------------------------------


def _edges(bin_name: str) -> tuple[float, float]:
    """(lower, upper) edge of a histogram bin (telemetry.histogram's naming)."""
    if bin_name == "z":
        return (0.0, 0.0)
    k = int(bin_name[1:])
    low, high = GAMMA ** (k - 1), GAMMA ** k
    return (low, high) if bin_name[0] == "p" else (-high, -low)


def quantile_interval(histogram: Mapping[str, int], q: float = 0.95, *, alpha: float = DEFAULT_ALPHA,
                      n_target: float = DEFAULT_N_TARGET) -> Interval | None:
    """A confidence sequence for the q-quantile from a histogram; an end with too few samples
    behind it is infinite. None for an empty histogram."""
    names = sorted((name for name, count in histogram.items() if count > 0), key=bin_order)
    n = sum(int(histogram[name]) for name in names)
    if n <= 0:
        return None
    half = math.sqrt(q * (1 - q)) * boundary(n, alpha, n_target)
    counts = np.fromiter((int(histogram[name]) for name in names), dtype=np.int64, count=len(names))
    cdf = np.cumsum(counts) / n
    low_level, high_level = q - half, q + half
    if low_level <= 0:
        low = -math.inf
    else:
        low = _edges(names[int(np.searchsorted(cdf, low_level - 1e-12, side="left"))])[0]
    if high_level >= 1:
        high = math.inf
    else:
        index = int(np.searchsorted(cdf, high_level, side="right"))
        high = _edges(names[min(index, len(names) - 1)])[1]
    return Interval(low, high)


def quantile_ratio_interval(candidate: Mapping[str, int], baseline: Mapping[str, int], q: float = 0.95, *,
                            alpha: float = DEFAULT_ALPHA, n_target: float = DEFAULT_N_TARGET) -> Interval | None:
    """Bounds on candidate's q-quantile / baseline's (positive values, such as latency), each
    quantile at alpha / 2."""
    c = quantile_interval(candidate, q, alpha=alpha / 2, n_target=n_target)
    b = quantile_interval(baseline, q, alpha=alpha / 2, n_target=n_target)
    if c is None or b is None:
        return None
    low = c.low / b.high if c.low > 0 and b.high > 0 and math.isfinite(b.high) else 0.0
    high = c.high / b.low if b.low > 0 and math.isfinite(c.high) else math.inf
    return Interval(low, high)


# --- verdicts ----------------------------------------------------------------------------------


def verdict(interval: Interval | None, *, allowed: float, higher_is_worse: bool) -> str:
    """Red when the whole interval is beyond `allowed` (in the worse direction), green when the
    whole interval is within it, amber otherwise or without an interval."""
    if interval is None:
        return AMBER
    if higher_is_worse:
        if interval.low > allowed:
            return RED
        if interval.high <= allowed:
            return GREEN
    else:
        if interval.high < allowed:
            return RED
        if interval.low >= allowed:
            return GREEN
    return AMBER


# --- sample ratio mismatch ---------------------------------------------------------------------


@dataclass(frozen=True)
class SampleRatio:
    p_value: float
    mismatch: bool
    observed: dict[str, int]
    expected_share: dict[str, float]


def sample_ratio(observed: Mapping[str, int], weights: Mapping[str, float],
                 threshold: float = SRM_P_VALUE) -> SampleRatio | None:
    """Observed exposures per variant against the split's weights (variants with weight > 0);
    None with fewer than two such variants or no exposures."""
    keys = [key for key, weight in weights.items() if weight > 0]
    total_weight = sum(weights[key] for key in keys)
    counts = [int(observed.get(key, 0)) for key in keys]
    total = sum(counts)
    if len(keys) < 2 or total <= 0:
        return None
    shares = {key: weights[key] / total_weight for key in keys}
    expected = [total * shares[key] for key in keys]
    p_value = float(stats.chisquare(counts, f_exp=expected).pvalue)
    return SampleRatio(p_value, p_value < threshold, dict(zip(keys, counts, strict=True)), shares)


# --- how long a stage needs --------------------------------------------------------------------


def units_needed(*, allowed_relative: float, coefficient_of_variation: float, candidate_share: float,
                 alpha: float = DEFAULT_ALPHA, n_target: float = DEFAULT_N_TARGET, limit: int = 10**9) -> int | None:
    """Observations (both arms together) before the relative interval's half-width falls to
    `allowed_relative` (0.2 for "at most 20 % worse"): by then a guardrail with no regression
    behind it turns green, and one whose true regression is twice the allowed turns red.
    `coefficient_of_variation` is sigma / mean of the metric (equal in both arms, the no-effect
    case); None when even `limit` observations are not enough."""
    if allowed_relative <= 0 or not 0 < candidate_share < 1:
        return None
    cv2 = coefficient_of_variation ** 2

    def half_width(total: int) -> float:
        n_c, n_b = total * candidate_share, total * (1 - candidate_share)
        return math.sqrt(total * (cv2 / n_c + cv2 / n_b)) * boundary(total, alpha, n_target)

    if half_width(limit) > allowed_relative:
        return None
    low, high = 2, limit
    while low < high:
        middle = (low + high) // 2
        if half_width(middle) <= allowed_relative:
            high = middle
        else:
            low = middle + 1
    return low
