"""How the pages write values: sizes, durations, ages and times."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["ago", "duration", "size", "when"]


def size(value: int | None) -> str:
    """``value`` bytes in binary units ("3.2 MiB"); "-" when unknown."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    """``seconds`` as "1 h 4 min", "3 min 2 s" or "4.1 s"; "-" when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"


def ago(moment: datetime | None, now: datetime) -> str:
    """How long before ``now`` ``moment`` was ("never" for None)."""
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    if seconds < 0:
        return "in " + duration(-seconds)
    return duration(seconds) + " ago"


def when(moment: datetime | None) -> str:
    """``moment`` in UTC, to the second ("-" for None)."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
