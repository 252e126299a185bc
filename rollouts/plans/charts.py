"""Server-rendered SVG line charts for the plan page: one line per variant over time, the
stage entries as vertical markers, an optional limit line. No JavaScript and nothing from
a CDN; the numbers are also in a table beside each chart for screen readers and copying.

Pure: it takes points and returns markup (escaped), so it is tested without a database.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 60, 30, 12, 34
# The baseline in grey-blue, the candidate in orange; more variants (rare) in the rest.
PALETTE = ("#5b6b82", "#e07b00", "#2f7d4a", "#8a3ffc", "#b42318")
BUCKET_CHOICES = (1, 5, 15, 30, 60, 180, 360, 720, 1440)


@dataclass(frozen=True)
class Point:
    at: datetime.datetime
    value: float
    count: int


@dataclass(frozen=True)
class Marker:
    at: datetime.datetime
    label: str


def bucket_minutes_for(start: datetime.datetime, end: datetime.datetime, points: int = 60) -> int:
    """The smallest bucket from BUCKET_CHOICES that draws the span in at most `points` points."""
    minutes = max((end - start).total_seconds() / 60, 1)
    return next((choice for choice in BUCKET_CHOICES if minutes / choice <= points), BUCKET_CHOICES[-1])


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5 or 5 × a power of ten apart)."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def format_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "%":
        return f"{value * 100:.1f} %"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def _time_label(at: datetime.datetime, span: datetime.timedelta) -> str:
    return at.strftime("%H:%M") if span <= datetime.timedelta(days=1) else at.strftime("%d %b")


def line_chart(*, title: str, series: Mapping[str, Sequence[Point]], start: datetime.datetime,
               end: datetime.datetime, unit: str = "", markers: Sequence[Marker] = (),
               limit: tuple[float, str] | None = None) -> SafeString:
    """An SVG of `series` ({variant: points}) between `start` and `end`."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max(end - start, datetime.timedelta(minutes=1))
    values = [p.value for points in series.values() for p in points]
    if limit is not None:
        values.append(limit[0])
    low = min([0.0, *values]) if values else 0.0
    high = max(values) if values else 1.0
    ticks = nice_ticks(low, high)
    low, high = ticks[0], ticks[-1]

    def x(at: datetime.datetime) -> float:
        return LEFT + plot_w * min(max((at - start) / span, 0.0), 1.0)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - (value - low) / (high - low))

    parts = [format_html('<svg class="chart" viewBox="0 0 {} {}" role="img" aria-labelledby="{}">', WIDTH, HEIGHT,
                         _slug(title)),
             format_html('<title id="{}">{}</title>', _slug(title), title)]
    for tick in ticks:
        parts.append(format_html(
            '<line x1="{}" x2="{}" y1="{}" y2="{}" class="grid"/>'
            '<text x="{}" y="{}" class="axis" text-anchor="end">{}</text>',
            LEFT, WIDTH - RIGHT, _n(y(tick)), _n(y(tick)), LEFT - 6, _n(y(tick) + 4), format_value(tick, unit)))
    for i in range(5):
        at = start + span * (i / 4)
        parts.append(format_html('<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text>',
                                 _n(x(at)), HEIGHT - 12, _time_label(at, span)))
    for marker in markers:
        if start <= marker.at <= end:
            parts.append(format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" class="marker"><title>{}</title></line>'
                '<text x="{}" y="{}" class="marker-label">{}</text>',
                _n(x(marker.at)), _n(x(marker.at)), TOP, HEIGHT - BOTTOM, marker.label, _n(x(marker.at) + 3), TOP + 10,
                marker.label.split(" ")[0]))
    if limit is not None:
        parts.append(format_html('<line x1="{}" x2="{}" y1="{}" y2="{}" class="limit"><title>{}</title></line>',
                                 LEFT, WIDTH - RIGHT, _n(y(limit[0])), _n(y(limit[0])), limit[1]))
    for index, (variant, points) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        ordered = sorted(points, key=lambda p: p.at)
        if len(ordered) > 1:
            path = " ".join(f"{x(p.at):.1f},{y(p.value):.1f}" for p in ordered)
            parts.append(format_html('<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>', path, color))
        # The hot loop of a long plan's page: numbers need no escaping, the text is escaped once.
        label = escape(variant)
        for p in ordered:
            text = escape(f"{p.at:%d %b %H:%M}: {format_value(p.value, unit)} (n={p.count})")
            parts.append(f'<circle cx="{x(p.at):.1f}" cy="{y(p.value):.1f}" r="2.5" fill="{color}">'
                         f"<title>{label} {text}</title></circle>")
    if not values:
        parts.append(format_html('<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text>',
                                 _n(LEFT + plot_w / 2), _n(TOP + plot_h / 2), "No outcomes reported yet"))
    parts.append(mark_safe("</svg>"))  # noqa: S308 - a literal closing tag
    return mark_safe("".join(str(part) for part in parts))  # noqa: S308 - every part above is escaped


def table_rows(series: Mapping[str, Sequence[Point]], unit: str = "") -> SafeString:
    """The chart's numbers as table rows (built here, not in a template loop: a long plan has
    hundreds of them)."""
    rows = [(p.at.strftime("%d %b %H:%M"), variant, format_value(p.value, unit), p.count)
            for variant, points in series.items() for p in points]
    return format_html_join("", "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>", rows)


def legend(variants: Sequence[str]) -> list[dict[str, str]]:
    return [{"variant": variant, "color": PALETTE[i % len(PALETTE)]} for i, variant in enumerate(variants)]


def _n(value: float) -> str:
    return f"{value:.1f}"


def _slug(title: str) -> str:
    return "chart-" + "".join(c if c.isalnum() else "-" for c in escape(title).lower())[:60]
