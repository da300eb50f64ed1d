"""Calendar durations written the way restic writes them: ``30d``, ``2w``, ``1y6m``, ``12h``."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import MINYEAR, UTC, datetime, timedelta

from safehold.errors import UsageError

__all__ = ["Duration", "parse_duration"]

# ASCII digits only: `\d` would also accept other scripts' digits (fullwidth, Arabic-Indic),
# which int() happily converts, although nobody writes them in a config on purpose.
_DURATION_RE = re.compile(r"(?:[0-9]+[ymwdh])+")
_PART_RE = re.compile(r"([0-9]+)([ymwdh])")

_EXAMPLES = "30d, 2w, 1y6m or 12h"
_UNITS_HINT = "units: y = years, m = months, w = weeks, d = days, h = hours"


@dataclass(frozen=True, slots=True)
class Duration:
    """A span of calendar time: years, months, days and hours, none negative.

    Weeks are not a field of their own: ``2w`` is stored (and printed back) as ``14d``.
    A zero duration is valid and means "no span"; retention treats it as an unset rule,
    as restic does.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        for name in ("years", "months", "days", "hours"):
            value = getattr(self, name)
            # bool is an int subclass; Duration(days=True) is a bug, not a day.
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UsageError(
                    f"duration {name} must be a whole number >= 0, not {value!r}",
                    hint=f"write durations like {_EXAMPLES}",
                )

    def is_zero(self) -> bool:
        """Whether every part of the duration is zero."""
        return not (self.years or self.months or self.days or self.hours)

    def subtract_from(self, dt: datetime) -> datetime:
        """Return the moment this duration before ``dt``.

        Years and months step back on the calendar and clamp to the end of a shorter month
        (31 March minus ``1m`` is 28 or 29 February, never 2 or 3 March as Go's
        ``AddDate`` would give); then days step back on the wall clock, so one day before
        noon is noon even across a daylight-saving change; hours are elapsed time, so
        ``12h`` is twelve real hours whatever the zone does meanwhile.

        A span reaching before year 1 gives the earliest representable time (in ``dt``'s
        zone): nothing can be older, which is what a retention cut-off needs.
        """
        try:
            month_index = dt.year * 12 + (dt.month - 1) - (self.years * 12 + self.months)
            year, month0 = divmod(month_index, 12)
            if year < MINYEAR:
                raise OverflowError("before year 1")
            month = month0 + 1
            day = min(dt.day, calendar.monthrange(year, month)[1])
            result = dt.replace(year=year, month=month, day=day)
            if self.days:
                # Aware datetime arithmetic in Python is wall-clock arithmetic: right for
                # days. Skipped for zero days since arithmetic resets `fold` and would move
                # a time in the repeated autumn hour by an hour.
                result -= timedelta(days=self.days)
            if self.hours:
                if result.tzinfo is None:
                    result -= timedelta(hours=self.hours)
                else:
                    # Through UTC so that the hours are elapsed, not wall-clock, hours.
                    zone = result.tzinfo
                    result = (result.astimezone(UTC) - timedelta(hours=self.hours)).astimezone(zone)
        except OverflowError:
            return datetime.min.replace(tzinfo=dt.tzinfo)
        return result

    def __str__(self) -> str:
        parts = [
            f"{value}{unit}"
            for value, unit in (
                (self.years, "y"),
                (self.months, "m"),
                (self.days, "d"),
                (self.hours, "h"),
            )
            if value
        ]
        return "".join(parts) or "0d"


def parse_duration(text: str) -> Duration:
    """Parse ``30d``, ``2w``, ``1y6m``, ``12h``, ``1y2m3d4h`` into a :class:`Duration`.

    Each part is a whole number followed by one unit: ``y`` years, ``m`` months (never
    minutes), ``w`` weeks, ``d`` days, ``h`` hours. Units may come in any order but only
    once each, since ``1d2d`` is more likely a typo than a wish for three days. Surrounding
    whitespace is ignored; anything else raises :class:`~safehold.errors.UsageError`.
    """
    stripped = text.strip()
    if not _DURATION_RE.fullmatch(stripped):
        raise UsageError(
            f"invalid duration {_shown(text)}: expected a number and a unit, such as {_EXAMPLES}",
            hint=_UNITS_HINT,
        )
    values: dict[str, int] = {}
    for number, unit in _PART_RE.findall(stripped):
        if unit in values:
            raise UsageError(
                f"invalid duration {_shown(text)}: unit {unit!r} appears more than once; "
                f"write it once, such as {_EXAMPLES}",
                hint=_UNITS_HINT,
            )
        try:
            values[unit] = int(number)
        except ValueError:  # beyond sys.get_int_max_str_digits(), a DoS guard
            raise UsageError(
                f"invalid duration {_shown(text)}: the number is too long; "
                f"write something like {_EXAMPLES}",
                hint=_UNITS_HINT,
            ) from None
    return Duration(
        years=values.get("y", 0),
        months=values.get("m", 0),
        days=values.get("w", 0) * 7 + values.get("d", 0),
        hours=values.get("h", 0),
    )


def _shown(text: str) -> str:
    # Error messages end up in logs and API answers; a runaway value should not flood them.
    return repr(text if len(text) <= 40 else text[:37] + "...")
