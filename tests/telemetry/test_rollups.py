"""Hourly and daily roll-ups: the aggregation keeps them with the minute buckets, and
`evidence` and `series` give the answers the events mean whether a window is hour- or
day-aligned, minute-edged or spans hours and days, with whole hours and days read from the
roll-ups. Expected values are worked out from the event lists below (by hand, or by
counting the lists in the simplest way), never taken from the code under test."""

from __future__ import annotations

import datetime
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone

from telemetry import histogram
from telemetry.models import (
    DailyExposureBucket,
    DailyOutcomeBucket,
    ExposureBucket,
    HourlyExposureBucket,
    HourlyOutcomeBucket,
    Metric,
    OutcomeBucket,
)
from telemetry.selectors import evidence, series
from telemetry.services import events_aggregate
from tests.telemetry.conftest import environment_id, exposure, flag_id, outcome

pytestmark = pytest.mark.django_db
Post = Callable[..., Any]
BASELINE, CANDIDATE = "baseline_v3", "citation_first_v4"
LATENCY, RESOLVED = "latency_p95", "resolved_without_escalation"
NOW = timezone.now().astimezone(datetime.UTC)
MINUTE = datetime.timedelta(minutes=1)


@dataclass(frozen=True)
class Scenario:
    """Events at minutes after `base`: exposures (unit, variant, minutes, served) and
    outcomes (unit, metric, value, minutes), each outcome after its unit's first exposure
    so it counts for that unit's one variant; and windows as (start, end) minutes."""

    base: datetime.datetime
    prefix: str  # of the units, so that scenarios posted together do not share units
    exposures: tuple[tuple[str, str, float, str], ...]
    outcomes: tuple[tuple[str, str, float, float], ...]
    windows: dict[str, tuple[float, float]]

    def at(self, minutes: float) -> datetime.datetime:
        return self.base + datetime.timedelta(minutes=minutes)

    def minute_of(self, minutes: float) -> datetime.datetime:
        """The per-minute bucket an event at `minutes` lands in."""
        return self.at(math.floor(minutes))

    def window(self, name: str) -> tuple[datetime.datetime, datetime.datetime]:
        return self.at(self.windows[name][0]), self.at(self.windows[name][1])


# Four hours from an hour-aligned base six hours ago; c1 and c2 are served the baseline once each.
HOURS = Scenario(
    base=NOW.replace(minute=0, second=0, microsecond=0) - datetime.timedelta(hours=6), prefix="h-",
    exposures=(("b1", BASELINE, 5.5, BASELINE), ("b1", BASELINE, 65, BASELINE), ("b2", BASELINE, 59.75, BASELINE),
               ("b2", BASELINE, 125, BASELINE), ("b3", BASELINE, 170, BASELINE),
               ("c1", CANDIDATE, 30, BASELINE), ("c1", CANDIDATE, 61, CANDIDATE), ("c2", CANDIDATE, 90.25, CANDIDATE),
               ("c2", CANDIDATE, 185, BASELINE), ("c3", CANDIDATE, 179.5, CANDIDATE), ("c4", CANDIDATE, 230, CANDIDATE)),
    outcomes=(("b1", LATENCY, 120, 6), ("b1", LATENCY, 80, 66), ("b2", LATENCY, 200, 60), ("b3", LATENCY, 90, 171),
              ("c1", LATENCY, 300, 31), ("c1", LATENCY, 150, 62.5), ("c2", LATENCY, 400, 120),
              ("c3", LATENCY, 250, 179.75), ("c4", LATENCY, 500, 231),
              ("b1", RESOLVED, 1, 7), ("b2", RESOLVED, 0, 126), ("c1", RESOLVED, 1, 61.5), ("c2", RESOLVED, 1, 91),
              ("c3", RESOLVED, 0, 180)),
    windows={"hour-aligned": (60, 180), "minute-edged": (30, 150), "spans hours, edges mid-minute": (5.25, 200.5),
             "inside one hour": (62, 119), "one whole hour": (120, 180), "everything": (0, 240)},
)
# From three hours before a UTC midnight three days ago to two days and three hours after it.
DAYS = Scenario(
    base=NOW.replace(hour=0, minute=0, second=0, microsecond=0) - datetime.timedelta(days=3), prefix="d-",
    exposures=(("b1", BASELINE, -170.5, BASELINE), ("b1", BASELINE, 30, BASELINE), ("b2", BASELINE, 700.25, BASELINE),
               ("b2", BASELINE, 1439.5, BASELINE), ("b3", BASELINE, 1500, BASELINE), ("b3", BASELINE, 2900, BASELINE),
               ("b4", BASELINE, 3000, BASELINE),
               ("c1", CANDIDATE, -100, BASELINE), ("c1", CANDIDATE, 65, CANDIDATE), ("c2", CANDIDATE, 1200, CANDIDATE),
               ("c2", CANDIDATE, 1441, BASELINE), ("c3", CANDIDATE, 2000.75, CANDIDATE),
               ("c4", CANDIDATE, 2880, CANDIDATE), ("c4", CANDIDATE, 3010, CANDIDATE)),
    outcomes=(("b1", LATENCY, 120, -170), ("b1", LATENCY, 80, 31), ("b2", LATENCY, 200, 701), ("b2", LATENCY, 90, 1440),
              ("b3", LATENCY, 150, 1501), ("b4", LATENCY, 300, 3001), ("c1", LATENCY, 310, -99),
              ("c1", LATENCY, 160, 66), ("c2", LATENCY, 410, 1201), ("c2", LATENCY, 260, 1500),
              ("c3", LATENCY, 510, 2001), ("c4", LATENCY, 220, 2881),
              ("b1", RESOLVED, 1, 32), ("b3", RESOLVED, 0, 1502), ("c1", RESOLVED, 1, 67), ("c2", RESOLVED, 1, 1441.5),
              ("c3", RESOLVED, 0, 2002), ("c4", RESOLVED, 1, 3011)),
    windows={"day-aligned": (0, 1440), "two whole days, edges mid-minute": (-120.5, 2955.25),
             "across midnight, no whole day": (1000, 1800), "a day and hours": (-60, 1620),
             "minutes around midnight": (1439.25, 1441.5), "everything": (-180, 3060)},
)
SCENARIOS = {"hours": HOURS, "days": DAYS}


def post_scenario(post: Post, scenario: Scenario, exposures: tuple | None = None, outcomes: tuple | None = None) -> None:
    exposures = scenario.exposures if exposures is None else exposures
    outcomes = scenario.outcomes if outcomes is None else outcomes
    prefix = scenario.prefix
    response = post([exposure(prefix + unit, variant, served=served, time=scenario.at(m).isoformat())
                     for unit, variant, m, served in exposures]
                    + [outcome(prefix + unit, metric, value, time=scenario.at(m).isoformat())
                       for unit, metric, value, m in outcomes])
    assert response.json()["accepted"] == len(exposures) + len(outcomes)


def p95_of(values: list[float]) -> float | None:
    """The nearest-rank 95th percentile, as the histogram reports it: its bin's midpoint."""
    if not values:
        return None
    ordered = sorted(values)
    return histogram.representative(histogram.bin_of(ordered[math.ceil(0.95 * len(ordered)) - 1]))


def population_variance(values: list[float]) -> float | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def binned(values: list[float]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[histogram.bin_of(value)] = counts.get(histogram.bin_of(value), 0) + 1
    return counts


def close(actual: Any, expected: Any) -> bool:
    """Equal, floats within 1e-9 (a variance from sums of squares, not from the differences)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
            close(actual[k], expected[k]) for k in expected)
    if isinstance(expected, float) and isinstance(actual, float):
        return actual == pytest.approx(expected, rel=1e-9, abs=1e-9)
    return actual == expected


def expected_evidence(scenario: Scenario, start: datetime.datetime, end: datetime.datetime,
                      exposures: tuple | None = None) -> dict[str, dict[str, Any]]:
    """What the events mean for [start, end): counted straight from the lists."""
    exposures = scenario.exposures if exposures is None else exposures
    variant_of = {unit: variant for unit, variant, _, _ in exposures}
    result = {}
    for variant in (BASELINE, CANDIDATE):
        mine = [(unit, m, served) for unit, v, m, served in exposures if v == variant]
        inside = [(unit, m, served) for unit, m, served in mine if start <= scenario.minute_of(m) < end]
        first_seen = {unit: min(m for u, m, _ in mine if u == unit) for unit, _, _ in mine}
        units = sum(start <= scenario.at(m) < end for m in first_seen.values())
        count = len(inside)
        fallbacks = sum(served != variant for _, _, served in inside)
        metrics = {}
        for key in (LATENCY, RESOLVED):
            values = [value for unit, metric, value, m in scenario.outcomes
                      if metric == key and variant_of[unit] == variant and start <= scenario.minute_of(m) < end]
            total = float(sum(values))
            metrics[key] = {"count": len(values), "sum": total, "mean": total / len(values) if values else None,
                            "rate": total / count if count else None, "p95": p95_of(values),
                            "variance": population_variance(values)}
            if key == LATENCY:  # a p95 metric: its evidence keeps the merged histogram
                metrics[key]["histogram"] = binned(values)
        if not (count or units or any(m["count"] for m in metrics.values())):
            continue  # nothing of the variant in the window: it is not listed
        result[variant] = {"exposures": count, "units": units, "fallbacks": fallbacks,
                           "fallback_rate": fallbacks / count if count else None, "metrics": metrics}
    return result


def expected_series(scenario: Scenario, metric: str, origin: datetime.datetime, width: int,
                    low: datetime.datetime, high: datetime.datetime) -> list[tuple]:
    """(slot start in minutes after base, variant, count, value) for the outcomes whose minute
    is in [low, high), in slots of `width` minutes from `origin`."""
    variant_of = {unit: variant for unit, variant, _, _ in scenario.exposures}
    step = datetime.timedelta(minutes=width)
    slots: dict[tuple, list[float]] = {}
    for unit, key, value, m in scenario.outcomes:
        if key == metric and low <= scenario.minute_of(m) < high:
            slot = origin + step * ((scenario.minute_of(m) - origin) // step)
            slots.setdefault((slot, variant_of[unit]), []).append(value)
    return [((slot - scenario.base) / MINUTE, variant, len(values),
             p95_of(values) if metric == LATENCY else sum(values) / len(values))
            for (slot, variant), values in sorted(slots.items())]


def scope() -> dict[str, int]:
    return {"flag_id": flag_id(), "environment_id": environment_id()}


def points(scenario: Scenario, metric: str, start: datetime.datetime, end: datetime.datetime,
           width: int) -> list[tuple]:
    return [((p["bucket"] - scenario.base) / MINUTE, p["variant"], p["count"], p["value"])
            for p in series(**scope(), metric_key=metric, start=start, end=end, bucket_minutes=width)]


# --- evidence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_evidence__every_window_shape__what_the_events_mean(post: Post, name: str) -> None:
    # Given the scenario's events, aggregated three at a time
    scenario = SCENARIOS[name]
    post_scenario(post, scenario)
    assert events_aggregate(chunk_size=3) == len(scenario.exposures) + len(scenario.outcomes)
    for window in scenario.windows:
        start, end = scenario.window(window)
        # When the evidence over the window is read, then it is what the events say
        result = evidence(**scope(), start=start, end=end, metric_keys=[LATENCY, RESOLVED])
        assert close(result, expected_evidence(scenario, start, end)), window


def test_evidence__hand_worked_windows(post: Post) -> None:
    post_scenario(post, HOURS)
    events_aggregate()
    # Hour-aligned [1 h, 3 h): b1@65, b2@125, b3@170 | c1@61, c2@90.25, c3@179.5 (c2@185 is later)
    aligned = evidence(**scope(), start=HOURS.at(60), end=HOURS.at(180), metric_keys=[LATENCY, RESOLVED])
    baseline, candidate = aligned[BASELINE], aligned[CANDIDATE]
    assert (baseline["exposures"], baseline["units"], baseline["fallback_rate"]) == (3, 1, 0.0)  # b3 first seen
    assert (candidate["exposures"], candidate["units"], candidate["fallback_rate"]) == (3, 2, 0.0)  # c2, c3
    assert baseline["metrics"][LATENCY]["count"] == 3  # 80, 200, 90
    assert baseline["metrics"][LATENCY]["mean"] == pytest.approx(370 / 3)
    assert candidate["metrics"][RESOLVED]["mean"] == 1.0  # c1 1, c2 1 (c3's 0 at 3:00 is outside)
    # Minute-edged [0:30, 2:30): c1@30 (served the baseline), c1@61, c2@90.25: one fallback in three;
    # latencies 300, 150, 400: the nearest-rank p95 is 400
    edged = evidence(**scope(), start=HOURS.at(30), end=HOURS.at(150), metric_keys=[LATENCY])
    assert (edged[CANDIDATE]["exposures"], edged[CANDIDATE]["fallback_rate"]) == (3, pytest.approx(1 / 3))
    assert edged[CANDIDATE]["metrics"][LATENCY]["p95"] == pytest.approx(400, rel=histogram.RELATIVE_ERROR)


def test_evidence__two_days_with_edges__hand_worked(post: Post) -> None:
    post_scenario(post, DAYS)
    events_aggregate()
    # [−2:00:30, day 2 + 1:15:15): every exposure but b1@−2:50:30 and b4@day 2 + 2:00, c4@day 2 + 2:10;
    # units first seen inside: b2, b3 | c1 (−1:40), c2, c3, c4 (b1 was first seen before)
    result = evidence(**scope(), start=DAYS.at(-120.5), end=DAYS.at(2955.25), metric_keys=[LATENCY, RESOLVED])
    baseline, candidate = result[BASELINE], result[CANDIDATE]
    assert (baseline["exposures"], baseline["units"], baseline["fallbacks"]) == (5, 2, 0)
    assert (candidate["exposures"], candidate["units"], candidate["fallbacks"]) == (6, 4, 2)  # c1@−1:40, c2@day 1
    assert baseline["metrics"][LATENCY]["sum"] == 80 + 200 + 90 + 150  # b1@0:31, b2 ×2, b3
    assert candidate["metrics"][RESOLVED]["mean"] == pytest.approx(2 / 3)  # c1 1, c2 1, c3 0 (c4's is later)


def test_evidence__whole_hours_and_days__read_from_the_roll_ups(post: Post) -> None:
    # Given both scenarios aggregated, then the minute rows of hours 1 and 2 of HOURS gone,
    # and the minute and hourly rows of the two whole days of DAYS
    post_scenario(post, HOURS)
    post_scenario(post, DAYS)
    events_aggregate()
    for model in (ExposureBucket, OutcomeBucket):
        model.objects.filter(bucket__gte=HOURS.at(60), bucket__lt=HOURS.at(180)).delete()
    for model in (ExposureBucket, OutcomeBucket, HourlyExposureBucket, HourlyOutcomeBucket):
        model.objects.filter(bucket__gte=DAYS.at(0), bucket__lt=DAYS.at(2880)).delete()
    # When windows holding those whole periods are read, then they still count them in full
    for scenario, window in ((HOURS, (60, 180)), (HOURS, (30, 200.5)), (HOURS, (59, 181)),
                             (DAYS, (0, 2880)), (DAYS, (-120.5, 2955.25)), (DAYS, (-1, 1440))):
        start, end = scenario.at(window[0]), scenario.at(window[1])
        result = evidence(**scope(), start=start, end=end, metric_keys=[LATENCY, RESOLVED])
        both = expected_evidence(HOURS, start, end)  # the two scenarios' times do not overlap
        assert close(result, both or expected_evidence(DAYS, start, end)), window


# --- the roll-up rows --------------------------------------------------------------------------


def test_rollup_rows__each_periods_totals_and_first_exposures(post: Post) -> None:
    post_scenario(post, HOURS)
    events_aggregate(chunk_size=4)
    rows = {(row.variant, row.bucket): (row.exposures, row.fallbacks, row.units)
            for row in HourlyExposureBucket.objects.filter(**scope())}
    at = HOURS.at
    assert rows == {
        (BASELINE, at(0)): (2, 0, 2),  # b1@5.5, b2@59.75: both first seen
        (BASELINE, at(60)): (1, 0, 0),
        (BASELINE, at(120)): (2, 0, 1),  # b3 first seen
        (CANDIDATE, at(0)): (1, 1, 1),
        (CANDIDATE, at(60)): (2, 0, 1),
        (CANDIDATE, at(120)): (1, 0, 1),
        (CANDIDATE, at(180)): (2, 1, 1),  # c4 first seen; c2@185 served the baseline
    }
    # Candidate latencies in hour 2: c2's 400 (2:00) and c3's 250 (2:59.75), from two minutes
    latency = HourlyOutcomeBucket.objects.get(**scope(), variant=CANDIDATE, bucket=at(120),
                                              metric_id=Metric.objects.get(key=LATENCY).pk)
    assert (latency.count, latency.total) == (2, 650.0)
    assert latency.histogram == {histogram.bin_of(400): 1, histogram.bin_of(250): 1}


def test_rollup_rows__days(post: Post) -> None:
    post_scenario(post, DAYS)
    events_aggregate(chunk_size=5)
    rows = {(row.variant, (row.bucket - DAYS.base) // datetime.timedelta(days=1)): (row.exposures, row.fallbacks,
                                                                                     row.units)
            for row in DailyExposureBucket.objects.filter(**scope())}
    assert rows == {
        (BASELINE, -1): (1, 0, 1),  # b1, first seen
        (BASELINE, 0): (3, 0, 1),  # b1, b2 twice; b2 first seen
        (BASELINE, 1): (1, 0, 1),  # b3, first seen
        (BASELINE, 2): (2, 0, 1),  # b3, b4; b4 first seen
        (CANDIDATE, -1): (1, 1, 1),  # c1 served the baseline, first seen
        (CANDIDATE, 0): (2, 0, 1),  # c1, c2; c2 first seen
        (CANDIDATE, 1): (2, 1, 1),  # c2 served the baseline, c3 first seen
        (CANDIDATE, 2): (2, 0, 1),  # c4 twice, first seen
    }
    latency = DailyOutcomeBucket.objects.get(**scope(), variant=BASELINE, bucket=DAYS.at(0),
                                             metric_id=Metric.objects.get(key=LATENCY).pk)
    assert (latency.count, latency.total) == (2, 280.0)  # 80, 200 (b2's 90 at minute 1440 is day 1's)


def test_rerun__nothing_new__roll_ups_unchanged(post: Post) -> None:
    # Given both scenarios aggregated
    post_scenario(post, HOURS)
    post_scenario(post, DAYS)
    events_aggregate()

    def stored() -> list[list]:
        return [sorted(model.objects.values_list("variant", "bucket", "exposures", "fallbacks", "units"))
                for model in (HourlyExposureBucket, DailyExposureBucket)] + [
                sorted(model.objects.values_list("variant", "metric_id", "bucket", "count", "total"))
                for model in (HourlyOutcomeBucket, DailyOutcomeBucket)]

    before = stored()
    # When aggregation runs again
    assert events_aggregate() == 0
    # Then nothing is counted twice
    assert stored() == before
    start, end = DAYS.window("everything")
    assert close(evidence(**scope(), start=start, end=end, metric_keys=[LATENCY, RESOLVED]),
        expected_evidence(DAYS, start, end))


@pytest.mark.parametrize("name,late", [("hours", ("c3", CANDIDATE, 20, CANDIDATE)),
                                       ("days", ("c3", CANDIDATE, -30, CANDIDATE))])
def test_late_exposure__earlier_first_exposure__unit_moves_to_its_period(post: Post, name: str, late: tuple) -> None:
    # Given the scenario aggregated, then c3 turns out to have been exposed earlier already
    scenario = SCENARIOS[name]
    post_scenario(post, scenario)
    events_aggregate()
    post_scenario(post, scenario, exposures=(late,), outcomes=())
    assert events_aggregate() == 1
    # Then its first exposure counts in the earlier hour and day, no longer in the later ones
    hours = dict(HourlyExposureBucket.objects.filter(**scope(), variant=CANDIDATE).values_list("bucket", "units"))
    days = dict(DailyExposureBucket.objects.filter(**scope(), variant=CANDIDATE).values_list("bucket", "units"))
    first = {"hours": 179.5, "days": 2000.75}[name]
    assert hours[scenario.minute_of(first).replace(minute=0)] == 0
    assert hours[scenario.minute_of(late[2]).replace(minute=0)] >= 1
    assert sum(hours.values()) == sum(days.values()) == 4  # c1..c4
    for window in scenario.windows:
        start, end = scenario.window(window)
        assert close(evidence(**scope(), start=start, end=end, metric_keys=[LATENCY, RESOLVED]),
            expected_evidence(scenario, start, end, scenario.exposures + (late,))), window


# --- series ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_series__minute_slots__exact_window_whatever_its_shape(post: Post, name: str) -> None:
    # Given the scenario aggregated, and slots that are not whole hours (some hours and days
    # still fit in one)
    scenario = SCENARIOS[name]
    post_scenario(post, scenario)
    events_aggregate()
    for window in scenario.windows:
        start, end = scenario.window(window)
        origin = start.replace(second=0, microsecond=0)
        for width in (7, 90, 100, 150, 2000):
            for metric in (LATENCY, RESOLVED):
                # Then each slot counts the minutes of the window in it
                assert points(scenario, metric, start, end, width) == expected_series(
                    scenario, metric, origin, width, start, end), (window, width, metric)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_series__hour_and_day_multiples__aligned_whole_periods(post: Post, name: str) -> None:
    scenario = SCENARIOS[name]
    post_scenario(post, scenario)
    events_aggregate()
    for window in scenario.windows:
        start, end = scenario.window(window)
        for width, first in ((60, start.replace(minute=0, second=0, microsecond=0)),
                             (360, start.replace(minute=0, second=0, microsecond=0)),
                             (1440, start.replace(hour=0, minute=0, second=0, microsecond=0)),
                             (2880, start.replace(hour=0, minute=0, second=0, microsecond=0))):
            period = datetime.timedelta(minutes=60 if width % 1440 else 1440)
            past_end = first + -((first - end) // period) * period  # the end of the last period overlapping it
            for metric in (LATENCY, RESOLVED):
                # Then slots start on the hour (day) and every hour (day) overlapping the window counts in full
                assert points(scenario, metric, start, end, width) == expected_series(
                    scenario, metric, first, width, first, past_end), (window, width, metric)


def test_series__hand_worked_points(post: Post) -> None:
    post_scenario(post, HOURS)
    post_scenario(post, DAYS)
    events_aggregate()
    # 90-minute slots from 0:00: [0, 90) b1 120, 80, b2 200 | c1 300, 150; [90, 180) b3 90 | c2 400, c3 250
    assert [(o, v, n) for o, v, n, _ in points(HOURS, LATENCY, HOURS.at(0), HOURS.at(180), 90)] == [
        (0, BASELINE, 3), (0, CANDIDATE, 2), (90, BASELINE, 1), (90, CANDIDATE, 2)]
    # Hourly slots over 0:30–1:30 cover hours 0 and 1 whole: resolved b1 1 (0:07) | c1 1 (1:01.5), c2 1 (1:31)
    assert points(HOURS, RESOLVED, HOURS.at(30), HOURS.at(90), 60) == [(0, BASELINE, 1, 1.0),
                                                                       (60, CANDIDATE, 2, 1.0)]
    # Daily slots from 12:00 on day 0 to day 1 cover days 0 and 1 whole: resolved b1 1 | c1 1;
    # b3 0 | c2 1, c3 0
    assert points(DAYS, RESOLVED, DAYS.at(720), DAYS.at(1441), 1440) == [
        (0, BASELINE, 1, 1.0), (0, CANDIDATE, 1, 1.0), (1440, BASELINE, 1, 0.0), (1440, CANDIDATE, 2, 0.5)]


def test_selectors__whole_periods_and_edges__fixed_number_of_queries(post: Post,
                                                                     django_assert_num_queries: Any) -> None:
    post_scenario(post, DAYS)
    events_aggregate()
    span = scope()
    start, end = DAYS.window("two whole days, edges mid-minute")
    with django_assert_num_queries(4):
        evidence(**span, start=start, end=end, metric_keys=[LATENCY, RESOLVED])
    for width in (90, 2000, 60, 1440):
        with django_assert_num_queries(2):
            series(**span, metric_key=LATENCY, start=start, end=end, bucket_minutes=width)


def test_backfill_migration__from_minute_tables__same_roll_ups_as_the_aggregation(post: Post) -> None:
    # Given both scenarios aggregated (a late exposure included), and their roll-ups as kept
    post_scenario(post, HOURS)
    post_scenario(post, DAYS)
    events_aggregate()
    post_scenario(post, DAYS, exposures=(("c3", CANDIDATE, -30, CANDIDATE),), outcomes=())
    events_aggregate()
    exposure_rollups = (HourlyExposureBucket, DailyExposureBucket)
    outcome_rollups = (HourlyOutcomeBucket, DailyOutcomeBucket)

    def roll_ups() -> list[list]:
        return [sorted(model.objects.values_list("variant", "bucket", "exposures", "fallbacks", "units"))
                for model in exposure_rollups] + [
                sorted((v, m, b, c, t, sorted(h.items())) for v, m, b, c, t, h in model.objects.values_list(
                    "variant", "metric_id", "bucket", "count", "total", "histogram"))
                for model in outcome_rollups]

    kept = roll_ups()
    # When the roll-ups are rebuilt by the migration that introduced them
    for model in exposure_rollups + outcome_rollups:
        model.objects.all().delete()
    migration = importlib.import_module("telemetry.migrations.0002_hourly_and_daily_rollups")
    migration.backfill_rollups(apps, SimpleNamespace(connection=connection))
    # Then they are the same
    assert roll_ups() == kept
