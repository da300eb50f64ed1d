"""Charts as inline SVG, drawn on the server: a slot strip, a bar chart, a phase timeline.

A chart library in the browser would need JavaScript and a vendored bundle; these three
shapes are a few rectangles each, so the pages draw them here (docs/architecture.md).
Every shape carries a ``<title>`` (its tooltip and its text for a screen reader) and the
chart an ``aria-label``; colours come from the stylesheet's classes, not from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

__all__ = ["Bar", "Cell", "Span", "bar_chart", "strip", "timeline"]


@dataclass(frozen=True)
class Cell:
    """One cell of a strip: a CSS state class and its tooltip."""

    state: str
    title: str


@dataclass(frozen=True)
class Bar:
    """One bar: its value, its label under the chart and its tooltip."""

    value: float
    title: str
    state: str = "succeeded"


@dataclass(frozen=True)
class Span:
    """One span of a timeline, in seconds from the timeline's start."""

    start: float
    end: float
    label: str
    state: str
    title: str


def strip(cells: Sequence[Cell], *, label: str, size: int = 12, gap: int = 2) -> Markup:
    """A row of squares, oldest first (a plan's last 30 days of slots)."""
    width = max(1, len(cells) * (size + gap))
    parts = [
        f'<svg class="strip" role="img" aria-label="{escape(label)}" width="{width}" '
        f'height="{size}" viewBox="0 0 {width} {size}">'
    ]
    for i, cell in enumerate(cells):
        parts.append(
            f'<rect class="s-{escape(cell.state)}" x="{i * (size + gap)}" y="0" width="{size}" '
            f'height="{size}" rx="2"><title>{escape(cell.title)}</title></rect>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    bars: Sequence[Bar],
    *,
    label: str,
    unit: str,
    width: int = 600,
    height: int = 120,
    target: float | None = None,
    target_title: str = "target",
) -> Markup:
    """Bars oldest first, scaled to the largest; the largest value written at the top.
    ``target``: a dashed line across at that value (an RTO target), in the scale."""
    top = max([bar.value for bar in bars] + [target or 0.0], default=0.0) or 1.0
    step = min(40.0, width / max(1, len(bars)))  # a few runs: narrow bars, not a wall
    gap = min(2.0, step / 4)
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} '
        f'{height + 14}" preserveAspectRatio="xMinYMax meet" width="100%" height="{height + 14}">',
        f'<text class="axis" x="0" y="10">{escape(_number(top))} {escape(unit)}</text>',
        f'<line class="axis" x1="0" y1="{height + 13}" x2="{width}" y2="{height + 13}"/>',
    ]
    for i, bar in enumerate(bars):
        tall = max(1.0, bar.value / top * height) if bar.value > 0 else 0.0
        parts.append(
            f'<rect class="s-{escape(bar.state)}" x="{i * step:.1f}" y="{height + 13 - tall:.1f}"'
            f' width="{max(1.0, step - gap):.1f}" height="{tall:.1f}">'
            f"<title>{escape(bar.title)}</title></rect>"
        )
    if target:
        y = height + 13 - target / top * height
        parts.append(
            f'<line class="target" x1="0" y1="{y:.1f}" x2="{width}" y2="{y:.1f}">'
            f"<title>{escape(target_title)}</title></line>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def timeline(spans: Sequence[Span], *, label: str, width: int = 600, row: int = 18) -> Markup:
    """One row per span, placed by its start and end (a run's phases, a plan's ledger)."""
    total = max((span.end for span in spans), default=0.0) or 1.0
    height = max(1, len(spans)) * (row + 4)
    parts = [
        f'<svg class="timeline" role="img" aria-label="{escape(label)}" viewBox="0 0 '
        f'{width} {height}" width="100%" height="{height}">'
    ]
    for i, span in enumerate(spans):
        x = span.start / total * width * 0.7
        w = max(2.0, (span.end - span.start) / total * width * 0.7)
        y = i * (row + 4)
        parts.append(
            f'<g><title>{escape(span.title)}</title><rect class="s-{escape(span.state)}" '
            f'x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row}" rx="2"/>'
            f'<text x="{min(x + w + 4, width * 0.72):.1f}" y="{y + row - 5}">'
            f"{escape(span.label)}</text></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _number(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2f}"
