"""Server-rendered SVG charts for the plan page. `line_chart`: one line per variant over time,
the stage entries as vertical markers, an optional limit line. `band_chart`: a guardrail's (or
the primary metric's) always-valid 95 % interval over the current stage, each check's interval
shaded as a step from the check before, the point estimate as a line, the allowed end and 0 %
as reference lines, coloured by the verdict at the end; an unbounded end runs to the plot's
edge with a chevron. No JavaScript and nothing from a CDN; the numbers are also in a table
beside each chart for screen readers and copying.

Pure: it takes points and returns markup (escaped), so it is tested without a database.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Mapping, Sequence
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
    if span <= datetime.timedelta(hours=20):
        return at.strftime("%H:%M")
    return at.strftime("%d %b %H:%M") if span <= datetime.timedelta(days=4) else at.strftime("%d %b")


def _time_axis(start: datetime.datetime, span: datetime.timedelta,
               x: Callable[[datetime.datetime], float]) -> list[SafeString]:
    """Five time labels along the bottom, each label once (a short span repeats minutes)."""
    labels, seen = [], set()
    for i in range(5):
        at = start + span * (i / 4)
        label = _time_label(at, span)
        if label not in seen:
            seen.add(label)
            anchor = "end" if i == 4 else "middle"  # the last one ends at the plot's edge, inside the picture
            labels.append(format_html('<text x="{}" y="{}" class="axis" text-anchor="{}">{}</text>',
                                      _n(x(at)), HEIGHT - 12, anchor, label))
    return labels


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
    parts += _time_axis(start, span, x)
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


# --- the sequential interval over time ----------------------------------------------------------


@dataclass(frozen=True)
class BandPoint:
    """The evidence cumulated from the stage's entry up to `at`, judged: the 95 % confidence
    sequence's ends (None: unbounded, or not computed yet) and the point estimate, on the
    chart's scale (a relative difference, or the candidate's value)."""

    at: datetime.datetime
    low: float | None
    high: float | None
    estimate: float | None
    candidate_samples: int
    baseline_samples: int


VERDICT_CLASSES = {"red": "red", "amber": "amber", "green": "green"}
BAND_POINTS_CAP = 60  # a chart never draws more (the caller's buckets keep it there)


def _band_range(points: Sequence[BandPoint], references: Sequence[float], floor: float | None) -> tuple[float, float]:
    """The y range: every estimate and reference line in full, with a margin; an interval's
    finite end up to three margins beyond them, so one early, very wide interval does not
    flatten the rest (ends beyond that run to the edge, with a chevron; their numbers are in
    the table); an open end (None) only to the first margin."""
    core = [p.estimate for p in points if p.estimate is not None] + list(references)
    if not core:
        core = [0.0]
    low, high = min(core), max(core)
    margin = max(high - low, abs(high), abs(low), 0.05)
    soft_low, soft_high, hard_low, hard_high = low - margin, high + margin, low - 3 * margin, high + 3 * margin
    if floor is not None:
        soft_low, hard_low = max(soft_low, floor), max(hard_low, floor)
    drawn = [p for p in points if p.low is not None or p.high is not None or p.estimate is not None]
    lows = [soft_low if p.low is None else max(p.low, hard_low) for p in drawn]
    highs = [soft_high if p.high is None else min(p.high, hard_high) for p in drawn]
    return min([low, *lows]), max([high, *highs])


def band_chart(*, title: str, points: Sequence[BandPoint], start: datetime.datetime, end: datetime.datetime,
               verdict: str, relative: bool, unit: str = "", allowed: tuple[float, str] | None = None) -> SafeString:
    """An SVG of a confidence sequence over time: the band between its ends shaded, the point
    estimate as a line, the allowed end as a dashed line (and 0 % on a relative scale), all
    coloured by `verdict` ("red", "amber", "green": the judgement at the end). On a relative
    scale the values are candidate / baseline - 1, drawn in %. An unbounded end reaches the
    plot's edge, and its point's title says so."""
    points = sorted(points, key=lambda p: p.at)[-BAND_POINTS_CAP:]
    value_unit = "%" if relative else unit
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max(end - start, datetime.timedelta(minutes=1))
    references = ([0.0] if relative else []) + ([allowed[0]] if allowed is not None else [])
    low, high = _band_range(points, references, -1.0 if relative else None)
    ticks = nice_ticks(low, high)
    low, high = ticks[0], ticks[-1]
    verdict_class = VERDICT_CLASSES.get(verdict, "amber")

    def x(at: datetime.datetime) -> float:
        return LEFT + plot_w * min(max((at - start) / span, 0.0), 1.0)

    def y(value: float | None, unbounded_at: float) -> float:
        if value is None or not math.isfinite(value):
            return unbounded_at
        return TOP + plot_h * (1 - (min(max(value, low), high) - low) / (high - low))

    top, bottom = float(TOP), float(TOP + plot_h)
    slug = _slug(title)
    parts = [format_html('<svg class="chart band-chart verdict-{}" viewBox="0 0 {} {}" role="img" aria-labelledby="{}">',
                         verdict_class, WIDTH, HEIGHT, slug),
             format_html('<title id="{}">{}</title>', slug, title)]
    for tick in ticks:
        parts.append(format_html(
            '<line x1="{}" x2="{}" y1="{}" y2="{}" class="grid"/>'
            '<text x="{}" y="{}" class="axis" text-anchor="end">{}</text>',
            LEFT, WIDTH - RIGHT, _n(y(tick, top)), _n(y(tick, top)), LEFT - 6, _n(y(tick, top) + 4),
            _signed(tick, value_unit) if relative else format_value(tick, value_unit)))
    parts += _time_axis(start, span, x)
    drawn = [p for p in points if p.low is not None or p.high is not None or p.estimate is not None]
    if drawn:
        # A step per check: the interval judged at a check's time covers the evidence gathered
        # since the check before (since the stage's entry for the first), so it is drawn over that span.
        spans = []
        for i, p in enumerate(drawn):
            left, right = x(drawn[i - 1].at if i else start), x(p.at)
            if right - left < 6:  # a check at the very start, or checks closer than the eye sees: a narrow column
                left, right = right - 3, right + 3
            spans.append((left, right, p))
        upper = [f"{px:.1f},{y(p.high, top):.1f}" for left, right, p in spans for px in (left, right)]
        lower = [f"{px:.1f},{y(p.low, bottom):.1f}" for left, right, p in reversed(spans) for px in (right, left)]
        parts.append(format_html('<polygon points="{}" class="band"/>', " ".join(upper + lower)))
        # an open end, or one beyond the plot: a small chevron on the plot's edge, pointing on
        for left, right, p in spans:
            middle = (left + right) / 2
            if p.high is None or p.high > high:
                parts.append(f'<path d="M{middle - 3:.1f},{top + 5:.1f} L{middle:.1f},{top + 1:.1f} '
                             f'L{middle + 3:.1f},{top + 5:.1f}" class="open-end"/>')
            if p.low is None or p.low < low:
                parts.append(f'<path d="M{middle - 3:.1f},{bottom - 5:.1f} L{middle:.1f},{bottom - 1:.1f} '
                             f'L{middle + 3:.1f},{bottom - 5:.1f}" class="open-end"/>')
    if relative:
        parts.append(format_html('<line x1="{}" x2="{}" y1="{}" y2="{}" class="zero"><title>{}</title></line>',
                                 LEFT, WIDTH - RIGHT, _n(y(0.0, top)), _n(y(0.0, top)), "No difference (0 %)"))
    if allowed is not None:
        parts.append(format_html('<line x1="{}" x2="{}" y1="{}" y2="{}" class="limit"><title>{}</title></line>',
                                 LEFT, WIDTH - RIGHT, _n(y(allowed[0], top)), _n(y(allowed[0], top)), allowed[1]))
    estimates = [p for p in drawn if p.estimate is not None]
    if len(estimates) > 1:
        path = " ".join(f"{x(p.at):.1f},{y(p.estimate, top):.1f}" for p in estimates)
        parts.append(format_html('<polyline points="{}" class="estimate"/>', path))
    for p in drawn:
        text = escape(f"{p.at:%d %b %H:%M}: {band_text(p, value_unit, relative)} "
                      f"(n={p.candidate_samples} candidate, {p.baseline_samples} baseline)")
        at_y = y(p.estimate, (y(p.high, top) + y(p.low, bottom)) / 2)
        parts.append(f'<circle cx="{x(p.at):.1f}" cy="{at_y:.1f}" r="2.5" class="estimate-point"><title>{text}</title>'
                     "</circle>")
    if not drawn:
        parts.append(format_html('<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text>',
                                 _n(LEFT + plot_w / 2), _n(TOP + plot_h / 2), "No outcomes in this stage yet"))
    parts.append(mark_safe("</svg>"))  # noqa: S308 - a literal closing tag
    return mark_safe("".join(str(part) for part in parts))  # noqa: S308 - every part above is escaped


def _signed(value: float, unit: str) -> str:
    text = format_value(value, unit)
    return f"+{text}" if value > 0 else text


def _value_text(value: float | None, unit: str, relative: bool) -> str:
    if value is None:
        return "—"
    return _signed(value, unit) if relative else format_value(value, unit)


def band_end(value: float | None, unit: str, relative: bool, *, upper: bool) -> str:
    if value is None:
        return "no upper bound yet" if upper else "no lower bound yet"
    return _value_text(value, unit, relative)


def band_text(point: BandPoint, unit: str, relative: bool) -> str:
    """'+12.0 % (95 % interval +8.2 % to +13.0 %)', with an open end in words."""
    estimate = _value_text(point.estimate, unit, relative)
    return (f"{estimate} (95 % interval {band_end(point.low, unit, relative, upper=False)} to "
            f"{band_end(point.high, unit, relative, upper=True)})")


def band_rows(points: Sequence[BandPoint], *, relative: bool, unit: str = "") -> SafeString:
    """A band chart's numbers as table rows: time, estimate, the interval's ends, samples."""
    value_unit = "%" if relative else unit
    rows = [(p.at.strftime("%d %b %H:%M"),
             _value_text(p.estimate, value_unit, relative),
             band_end(p.low, value_unit, relative, upper=False), band_end(p.high, value_unit, relative, upper=True),
             p.candidate_samples, p.baseline_samples)
            for p in sorted(points, key=lambda p: p.at)[-BAND_POINTS_CAP:]]
    return format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
