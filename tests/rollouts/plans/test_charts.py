"""The plan page's SVG charts (rollouts/plans/charts.py): a polyline per variant, escaped text, round
ticks; the confidence sequence's band over time with its open ends."""

from __future__ import annotations

import datetime
import re

import pytest

from rollouts.plans.charts import (
    BAND_POINTS_CAP,
    BOTTOM,
    HEIGHT,
    LEFT,
    RIGHT,
    TOP,
    WIDTH,
    BandPoint,
    Point,
    band_chart,
    band_rows,
    line_chart,
    nice_ticks,
)

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



# --- the confidence sequence's band over time ---------------------------------------------------

T0 = datetime.datetime(2026, 11, 1, 10, tzinfo=datetime.UTC)
PLOT_TOP = TOP
PLOT_BOTTOM = HEIGHT - BOTTOM


def _at(minutes: int) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def _polygon(svg: str) -> list[tuple[float, float]]:
    points = re.search(r'<polygon points="([^"]+)" class="band"/>', svg).group(1)
    return [tuple(float(v) for v in pair.split(",")) for pair in points.split()]


def _line_y(svg: str, css_class: str) -> float:
    return float(re.search(rf'<line x1="[^"]+" x2="[^"]+" y1="([^"]+)" y2="[^"]+" class="{css_class}">', svg).group(1))


def test_band_chart__relative_interval__band_between_its_ends_allowed_and_zero_lines_verdict_colour() -> None:
    # Given three checks whose interval is +10 % to +30 % around +20 %, 20 % worse allowed:
    # the axis covers 0 … +30 %, ticks every 10 % (0, .1, .2, .3)
    points = [BandPoint(_at(10 * i), 0.1, 0.3, 0.2, 100 * i, 90 * i) for i in (1, 2, 3)]
    # When drawn as a breach
    svg = str(band_chart(title="Latency", points=points, start=T0, end=_at(30), verdict="red", relative=True,
                         allowed=(0.2, "allowed: 20.0 % worse")))

    def y(value: float) -> float:
        return round(PLOT_TOP + (PLOT_BOTTOM - PLOT_TOP) * (1 - value / 0.3), 1)
    # Then the band's upper edge runs at +30 %, its lower edge at +10 %, a step per check from the
    # stage's entry (the chart's start) to the last check, in the red verdict's class
    polygon = _polygon(svg)
    assert len(polygon) == 12
    assert {py for _, py in polygon[:6]} == {y(0.3)} and {py for _, py in polygon[6:]} == {y(0.1)}
    assert polygon[0][0] == LEFT and polygon[5][0] == WIDTH - RIGHT  # from the entry to the last check
    assert 'class="chart band-chart verdict-red"' in svg
    # And the estimate is a line at +20 %, the allowed line there too, and 0 % at the bottom
    estimate = re.search(r'<polyline points="([^"]+)" class="estimate"/>', svg).group(1)
    assert {float(pair.split(",")[1]) for pair in estimate.split()} == {y(0.2)}
    assert _line_y(svg, "limit") == y(0.2) and _line_y(svg, "zero") == y(0.0)
    # And each check's numbers are in its title, with its sample sizes
    assert "+20.0 % (95 % interval +10.0 % to +30.0 %) (n=300 candidate, 270 baseline)" in svg
    assert ">+30.0 %<" in svg  # a tick label, signed


def test_band_chart__unbounded_ends__reach_the_plot_edges_and_say_so() -> None:
    # Given a young stage: first no bound at all, then only a lower one
    points = [BandPoint(_at(5), None, None, 0.05, 10, 10), BandPoint(_at(10), -0.02, None, 0.05, 40, 40)]
    svg = str(band_chart(title="Latency", points=points, start=T0, end=_at(10), verdict="amber", relative=True,
                         allowed=(0.2, "allowed")))
    # Then the upper edge is the plot's top everywhere, the lower edge its bottom over the first
    # check's step only, and each open end has its chevron on the edge
    polygon = _polygon(svg)
    upper, lower = polygon[:4], polygon[4:]
    assert {py for _, py in upper} == {float(PLOT_TOP)}
    assert {py for _, py in lower[2:]} == {float(PLOT_BOTTOM)} and all(py < PLOT_BOTTOM for _, py in lower[:2])
    assert svg.count('class="open-end"') == 3
    assert "no upper bound yet" in svg and "no lower bound yet" in svg
    assert 'verdict-amber' in svg
    rows = str(band_rows(points, relative=True))
    assert rows.count("<tr>") == 2 and "no upper bound yet" in rows and "-2.0 %" in rows


def test_band_chart__absolute_scale__limit_in_the_metric_unit_and_no_zero_line() -> None:
    points = [BandPoint(_at(5), 300.0, 700.0, 500.0, 50, 0)]
    svg = str(band_chart(title="Latency", points=points, start=T0, end=_at(5), verdict="green", relative=False,
                         unit="ms", allowed=(800.0, "limit: at most 800 ms")))
    assert 'class="zero"' not in svg and 'class="limit"' in svg and "limit: at most 800 ms" in svg
    assert "500 ms (95 % interval 300 ms to 700 ms)" in svg
    assert len(_polygon(svg)) == 4  # one check: one step, from the entry to it


def test_band_chart__text_is_escaped_and_points_are_capped() -> None:
    points = [BandPoint(_at(i), 0.0, 0.1, 0.05, i, i) for i in range(100)]
    svg = str(band_chart(title="<script>x</script>", points=points, start=T0, end=_at(100), verdict="green",
                         relative=True, allowed=(0.2, 'a "quoted" <b>limit</b>')))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "<b>" not in svg and "&lt;b&gt;limit&lt;/b&gt;" in svg
    assert svg.count("<circle") == BAND_POINTS_CAP


def test_band_chart__no_points__says_so() -> None:
    svg = str(band_chart(title="Latency", points=[], start=T0, end=_at(30), verdict="amber", relative=True))
    assert "No outcomes in this stage yet" in svg and "<polygon" not in svg


def test_charts__a_short_span__each_time_label_once() -> None:
    # Given three minutes (five labels would repeat minutes)
    points = [BandPoint(_at(3), 0.0, 0.1, 0.05, 40, 40)]
    svg = str(band_chart(title="Latency", points=points, start=T0, end=_at(3), verdict="green", relative=True))
    labels = re.findall(r'class="axis" text-anchor="(?:middle|end)">(\d\d:\d\d)<', svg)
    assert labels == ["10:00", "10:01", "10:02", "10:03"]


def test_band_chart__a_very_wide_finite_interval__cut_at_the_edges_with_chevrons_its_numbers_in_the_table() -> None:
    # Given a check whose interval is -500 % … +500 % around 0, 20 % worse allowed: far beyond
    # three margins (0.2 each) around the estimate and the reference lines
    points = [BandPoint(_at(10), -5.0, 5.0, 0.0, 40, 40)]
    svg = str(band_chart(title="Rate", points=points, start=T0, end=_at(10), verdict="amber", relative=True,
                         allowed=(0.2, "allowed")))
    # Then the band fills the plot from edge to edge, with a chevron at each, and the axis stops
    # at three margins around them (-60 % … +80 %, rounded out to round ticks)
    assert {py for _, py in _polygon(svg)} == {float(PLOT_TOP), float(PLOT_BOTTOM)}
    assert svg.count('class="open-end"') == 2
    ticks = [float(t.strip("+ %")) for t in re.findall(r'text-anchor="end">([+-]?[\d.]+ %)<', svg)]
    assert ticks == [round(100 * tick, 6) for tick in nice_ticks(-0.6, 0.8)]
    assert "+500.0 %" in str(band_rows(points, relative=True)) and "-500.0 %" in str(band_rows(points, relative=True))
