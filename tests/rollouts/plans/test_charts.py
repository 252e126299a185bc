"""The plan page's SVG charts (rollouts/plans/charts.py): a polyline per variant, escaped text, round ticks."""

from __future__ import annotations

import datetime

import pytest

from rollouts.plans.charts import Point, line_chart, nice_ticks

pytestmark = pytest.mark.django_db


def test_chart__two_variants__a_polyline_each_with_titles_and_escaped_text() -> None:
    start = datetime.datetime(2026, 11, 1, 10, tzinfo=datetime.UTC)
    points = {"base<line>": [Point(start + datetime.timedelta(minutes=10 * i), 100 + i, 5) for i in range(3)],
              "cand": [Point(start + datetime.timedelta(minutes=10 * i), 120 + i, 7) for i in range(3)]}
    svg = str(line_chart(title="Latency <p95>", series=points, start=start,
                         end=start + datetime.timedelta(minutes=30), unit="ms", limit=(150.0, "limit")))
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 6
    assert "base&lt;line&gt;" in svg and "<line>" not in svg.replace("<line ", "")
    assert "Latency &lt;p95&gt;" in svg and 'class="limit"' in svg
    assert "(n=7)" in svg


def test_nice_ticks__cover_the_range_with_round_steps() -> None:
    assert nice_ticks(0, 100) == [0, 25, 50, 75, 100] or nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    ticks = nice_ticks(0.42, 0.58)
    assert ticks[0] <= 0.42 and ticks[-1] >= 0.58 and len(ticks) <= 6

