"""A report's HTML (Jinja2, the template shipped in ``service/templates``), with inline
colours: green for what succeeded, red for what failed or is over its target."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from safehold import units
from safehold.service.reports_data import ReportData

__all__ = ["render_html"]

GREEN, RED, GREY = "#1a7f37", "#cf222e", "#656d76"
STATUS_COLOUR = {"ok": GREEN, "breach": RED, "none": RED, "no target": GREY}


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("safehold.service", "templates"),
        # Plan names, errors and hook output are the users': always escaped.
        autoescape=select_autoescape(["html", "j2"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, day=_day, size=_size, span=_span)
    env.globals.update(GREEN=GREEN, RED=RED, GREY=GREY, STATUS_COLOUR=STATUS_COLOUR)
    return env


def render_html(report: ReportData) -> str:
    """The report as one HTML document."""
    return _environment().get_template("report.html.j2").render(r=report)


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _day(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d")


def _size(value: int | None) -> str:
    return units.size(value, unknown="")


def _span(seconds: float | None) -> str:
    return units.duration(seconds, unknown="")
