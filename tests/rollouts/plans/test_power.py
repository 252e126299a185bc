"""How long a stage needs (rollouts/plans/power.py): the observations each kind of guardrail
needs, worked out here from the confidence sequence's formula (sequential.py's module docstring)
rather than read from the module, their conversion to hours at the recent rate, the honest
answers when there is nothing to estimate from, and the last 7 days read from posted events."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from django.utils import timezone

from rollouts.plans import power
from rollouts.plans.guardrails import Arm
from telemetry.histogram import GAMMA, bin_of
from tests.rollouts.plans.support import BASELINE, CANDIDATE, environment, flag, report

ALPHA = 0.05
N_TARGET = 1_000  # sequential.DEFAULT_N_TARGET, the tuning the guardrails are judged with
WEEK_HOURS = 7 * 24


def _boundary(n: float, alpha: float = ALPHA) -> float:
    """Waudby-Smith et al. (2024), Theorem 2.2 with rho^2 tuned for n_target, written out by hand:
    sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) )."""
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / N_TARGET
    return math.sqrt(2 * (n * rho2 + 1) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha))


def _first(holds: Any, start: int = 2) -> int:
    """The first n from `start` for which `holds(n)`, by counting up."""
    n = start
    while not holds(n):
        n += 1
    return n


def _guardrail(metric: str, kind: str, threshold: float, min_samples: int = 50) -> dict[str, Any]:
    return {"metric": metric, "kind": kind, "threshold": threshold, "min_samples": min_samples}


def test_relative_rate__half_and_half__needs_the_n_where_the_half_width_reaches_20_percent() -> None:
    # Given a correction rate of 20 % over 16,800 outcomes in the last 7 days (100 an hour)
    recent = Arm(exposures=16_800, count=16_800, total=0.2 * 16_800, variance=0.16)
    # When a stage sending half of the traffic to the candidate estimates "at most 20 % worse"
    estimate = power.guardrail_estimate(_guardrail("correction_rate", "relative_max", 1.2), metric_kind="rate",
                                        recent=recent, hours=WEEK_HOURS, share=0.5)
    # Then the coefficient of variation is sqrt(0.2 * 0.8) / 0.2 = 2, so with N/2 in each arm the
    # relative half-width is sqrt(N (4 / (N/2) + 4 / (N/2))) * b(N) = 4 b(N); it needs 4 b(N) <= 0.2
    expected = _first(lambda n: 4 * _boundary(n) <= 0.2)
    assert estimate.observations == expected
    # ... which at 100 observations an hour takes N / 100 hours
    assert estimate.hours == pytest.approx(expected / 100)
    assert estimate.headline == f"about {round(expected / 100)} h at the traffic of the last 7 days"
    assert estimate.allowance == "at most 20 % worse"
    assert estimate.detail == "≈ 2,400 outcomes a day reach this flag; this stage sends 50 % of them to the candidate"


def test_absolute_mean__five_percent__needs_the_candidate_n_where_the_interval_clears_the_limit() -> None:
    # Given a cost per case of mean 2.0 and standard deviation 0.5, 1,680 outcomes in 7 days (10 an hour)
    recent = Arm(exposures=1_680, count=1_680, total=2.0 * 1_680, variance=0.25)
    # When a 5 % stage estimates "at most 2.1" (the interval's half-width must fall to 2.1 - 2.0)
    estimate = power.guardrail_estimate(_guardrail("estimated_cost_per_case", "absolute_max", 2.1),
                                        metric_kind="mean", recent=recent, hours=WEEK_HOURS, share=0.05)
    # Then N is the first total whose candidate share (5 % of N, rounded) gives 0.5 b(0.05 N) <= 0.1,
    # and at least the 50 candidate samples the guardrail asks for (N >= 50 / 0.05 = 1,000)
    expected = _first(lambda n: 0.5 * _boundary(round(0.05 * n)) <= 0.1, start=1_000)
    assert expected > 1_000  # the interval, not the minimum, decides here
    assert estimate.observations == expected
    assert estimate.hours == pytest.approx(expected / 10)
    assert estimate.headline == f"about {round(expected / 10 / 24)} days at the traffic of the last 7 days"
    assert estimate.longer_than_bake is False  # no bake given


def test_absolute_mean__already_past_the_limit__time_to_turn_red() -> None:
    # Given a cost per case of mean 2.0 and standard deviation 0.5, 10 an hour, over an "at most 1.9"
    recent = Arm(exposures=1_680, count=1_680, total=2.0 * 1_680, variance=0.25)
    # When a 5 % stage estimates it
    estimate = power.guardrail_estimate(_guardrail("estimated_cost_per_case", "absolute_max", 1.9),
                                        metric_kind="mean", recent=recent, hours=WEEK_HOURS, share=0.05)
    # Then the interval must clear 1.9 from above, the same 0.1 away: the same N as for "at most 2.1"
    expected = _first(lambda n: 0.5 * _boundary(round(0.05 * n)) <= 0.1, start=1_000)
    assert estimate.observations == expected
    assert "already past the limit (now 2): this is how long it takes to turn red" in estimate.detail


def test_relative_count__per_exposure__reads_exposures_not_events() -> None:
    # Given 168 incident signals (value 1 each) over 1,680 exposures: 0.1 per exposure, variance
    # 0.1 - 0.01 = 0.09 per exposure, so a coefficient of variation of 0.3 / 0.1 = 3
    recent = Arm(exposures=1_680, count=168, total=168.0, variance=0.0)
    # When a 50 % stage estimates "at most 50 % worse"
    estimate = power.guardrail_estimate(_guardrail("incident_signal", "relative_max", 1.5), metric_kind="count",
                                        recent=recent, hours=WEEK_HOURS, share=0.5, bake_minutes=60)
    # Then 6 b(N) <= 0.5 (sqrt(N (9 / (N/2) + 9 / (N/2))) = 6), counted in exposures (10 an hour)
    expected = _first(lambda n: 6 * _boundary(n) <= 0.5)
    assert estimate.observations == max(expected, 100)
    assert estimate.hours == pytest.approx(max(expected, 100) / 10)
    assert "≈ 240 exposures a day" in estimate.detail
    assert estimate.longer_than_bake is (estimate.hours > 1)


def test_min_samples__no_spread__the_guardrails_minimum_decides() -> None:
    # Given a mean that never varies (variance 0: the interval is a point at once)
    recent = Arm(exposures=1_680, count=1_680, total=3.0 * 1_680, variance=0.0)
    # When a 5 % stage's guardrail asks for 200 samples in each arm before judging
    estimate = power.guardrail_estimate(_guardrail("estimated_cost_per_case", "relative_max", 1.2, min_samples=200),
                                        metric_kind="mean", recent=recent, hours=WEEK_HOURS, share=0.05)
    # Then the stage needs 200 / 0.05 = 4,000 observations for the candidate's 200
    assert estimate.observations == 4_000
    assert estimate.hours == pytest.approx(400)


def test_p95_relative__one_bin__needs_each_arm_to_bound_its_quantile() -> None:
    # Given 2,000 latencies of 200 ms in 7 days: one histogram bin, (GAMMA^(k-1), GAMMA^k]
    recent = Arm(exposures=2_000, count=2_000, total=400_000.0, variance=0.0, histogram={bin_of(200.0): 2_000})
    # When a 50 % stage estimates "at most 20 % worse"
    estimate = power.guardrail_estimate(_guardrail("latency_p95", "relative_max", 1.2), metric_kind="p95",
                                        recent=recent, hours=WEEK_HOURS, share=0.5)
    # Then with everything in one bin each arm's p95 interval is that bin, and the ratio's high end
    # its upper edge over its lower edge, GAMMA = 1.02 <= 1.2, as soon as both ends are finite: the
    # upper end needs 0.95 + sqrt(0.95 * 0.05) b(n; alpha / 2) < 1 in each arm of round(N / 2)
    arm = _first(lambda n: 0.95 + math.sqrt(0.95 * 0.05) * _boundary(n, ALPHA / 2) < 1)
    expected = _first(lambda n: round(n / 2) >= arm and round(n - n / 2) >= arm, start=100)
    assert GAMMA <= 1.2
    assert estimate.observations == expected
    assert estimate.hours == pytest.approx(expected / (2_000 / WEEK_HOURS))


def test_p95_relative__threshold_within_a_bin__more_than_30_days() -> None:
    # Given the same latencies and a guardrail allowing 1 % (the bins are 2 % wide)
    recent = Arm(exposures=2_000, count=2_000, total=400_000.0, variance=0.0, histogram={bin_of(200.0): 2_000})
    # When a 50 % stage estimates it
    estimate = power.guardrail_estimate(_guardrail("latency_p95", "relative_max", 1.01), metric_kind="p95",
                                        recent=recent, hours=WEEK_HOURS, share=0.5)
    # Then no sample size bounds the ratio that tightly
    assert estimate.headline == "more than 30 days at the traffic of the last 7 days"
    assert estimate.hours is None


@pytest.mark.parametrize(("stage", "guardrail", "recent", "said"), [
    ({"percentage": 0, "segments": ["beta_accounts"]}, _guardrail("correction_rate", "relative_max", 1.2),
     Arm(100, 100, 20.0, 0.16), "Depends on how many units beta_accounts hold"),
    ({"percentage": 100, "segments": []}, _guardrail("correction_rate", "relative_max", 1.2),
     Arm(100, 100, 20.0, 0.16), "no baseline is left to compare with"),
    ({"percentage": 5, "segments": []}, _guardrail("correction_rate", "relative_max", 1.2),
     Arm(), "no traffic in the last 7 days: cannot estimate"),
    ({"percentage": 5, "segments": []}, _guardrail("correction_rate", "relative_max", 1.2),
     Arm(exposures=100), "no correction_rate outcomes in the last 7 days: cannot estimate"),
    ({"percentage": 5, "segments": []}, _guardrail("correction_rate", "relative_max", 1.0),
     Arm(100, 100, 20.0, 0.16), "allows no regression at all"),
    ({"percentage": 5, "segments": []}, _guardrail("correction_rate", "relative_max", 1.2),
     Arm(100, 100, 0.0, 0.0), "was 0 over the last 7 days"),
    ({"percentage": 0, "segments": []}, _guardrail("correction_rate", "relative_max", 1.2),
     Arm(100, 100, 20.0, 0.16), "sends nothing to the candidate"),
])
def test_stage__nothing_to_estimate_from__says_why(stage: dict[str, Any], guardrail: dict[str, Any], recent: Arm,
                                                   said: str) -> None:
    # Given a stage and traffic that leave nothing to estimate
    traffic = power.Traffic({"correction_rate": recent})
    # When the stage is estimated
    [answer] = power.stage_estimates([stage], [guardrail], traffic=traffic, metric_kinds={"correction_rate": "rate"})
    # Then it says why instead of a time
    words = answer.problem or answer.estimates[0].headline
    assert said in words
    assert all(estimate.hours is None for estimate in answer.estimates)


def test_absolute_at_100_percent__estimated_on_the_candidate_alone() -> None:
    # Given a cost per case of mean 2.0, sd 0.5, 10 an hour, and a stage serving everyone the candidate
    traffic = power.Traffic({"estimated_cost_per_case": Arm(1_680, 1_680, 3_360.0, 0.25)})
    # When its "at most 2.1" guardrail is estimated
    [answer] = power.stage_estimates([{"percentage": 100, "segments": [], "min_bake_minutes": 0}],
                                     [_guardrail("estimated_cost_per_case", "absolute_max", 2.1)], traffic=traffic,
                                     metric_kinds={"estimated_cost_per_case": "mean"})
    # Then every observation is the candidate's: 0.5 b(N) <= 0.1, at least 50
    expected = _first(lambda n: 0.5 * _boundary(n) <= 0.1, start=50)
    assert answer.estimates[0].observations == expected
    assert answer.estimates[0].longer_than_bake is True  # a bake of 0 minutes ends before any estimate


def test_pooled__two_variants__adds_counts_and_pools_the_spread() -> None:
    # Given 30 outcomes of 100 on one variant and 10 of 300 on the other, no spread within each
    variants = {
        BASELINE: {"exposures": 30, "metrics": {"m": {"count": 30, "sum": 3_000.0, "variance": 0.0}}},
        CANDIDATE: {"exposures": 10, "metrics": {"m": {"count": 10, "sum": 3_000.0, "variance": 0.0}}},
    }
    # When they are pooled
    arm = power.pooled(variants, "m")
    # Then mean 6,000 / 40 = 150, variance (30 * 50^2 + 10 * 150^2) / 40 = 7,500
    assert (arm.exposures, arm.count, arm.total) == (40, 40, 6_000.0)
    assert arm.variance == pytest.approx(7_500)


@pytest.mark.django_db
def test_recent_traffic__posted_events__pooled_over_the_last_7_days(catalog: Any,
                                                                    django_assert_num_queries: Any) -> None:
    # Given latencies posted to the events API half an hour ago: 30 of 100 ms, 10 of 300 ms
    report("production", {BASELINE: [100.0] * 30, CANDIDATE: [300.0] * 10}, minutes_ago=30)
    env, flag_id = environment("production"), flag().pk
    # When the last 7 days are read (one evidence read: four queries)
    with django_assert_num_queries(4):
        traffic = power.recent_traffic(flag_id=flag_id, environment_id=env.pk, metric_keys=["latency_p95"])
    # Then both variants are pooled: 40 outcomes and exposures, mean 150, variance 7,500 (each
    # variant's values sit in one bin, so its own spread reads as 0)
    arm = traffic.arm("latency_p95")
    assert (arm.exposures, arm.count, arm.total) == (40, 40, 6_000.0)
    assert arm.variance == pytest.approx(7_500)
    assert sum(arm.histogram.values()) == 40
    # ... and a week later they are out of the window
    later = power.recent_traffic(flag_id=flag_id, environment_id=env.pk, metric_keys=["latency_p95"],
                                 now=timezone.now() + datetime.timedelta(days=7, minutes=1))
    assert later.arm("latency_p95").count == 0


@pytest.mark.parametrize(("minutes", "words"), [(0, "none"), (90, "90 min"), (60, "1 h"), (1_440, "1 day"),
                                                (4_320, "3 days")])
def test_bake_words__as_set(minutes: int, words: str) -> None:
    # Given a stage's bake in minutes, When it is put in words, Then it reads as set
    assert power.bake_words(minutes) == words


@pytest.mark.parametrize(("hours", "words"), [(0.001, "about 1 min"), (0.5, "about 30 min"), (3.2, "about 3 h"),
                                              (47, "about 47 h"), (24 * 9.4, "about 9 days")])
def test_duration_words__minutes_hours_days(hours: float, words: str) -> None:
    # Given a duration in hours, When it is put in words, Then minutes below 1.5 h, hours below 2 days
    assert power.duration_words(hours) == words


@pytest.mark.parametrize("kind", ["relative_max", "absolute_max"])
def test_values_near_the_float_limit__said_not_a_500(kind: str) -> None:
    # Given recent values near the largest float (accepted by the events API: they are finite)
    huge = power.pooled({BASELINE: {"exposures": 100, "metrics": {"cost": {"count": 100, "sum": 1e306,
                                                                            "variance": 1e300}}}}, "cost")
    guardrail = {"metric": "cost", "kind": kind, "threshold": 1.2 if kind == "relative_max" else 1e305}
    # When a stage's estimate is asked for
    estimate = power.guardrail_estimate(guardrail, metric_kind="mean", recent=huge, hours=24.0, share=0.5)
    # Then it says something a person can read, and raised nothing
    assert estimate.metric == "cost" and estimate.headline
