"""How the pages write values: sizes, durations, ages and times."""

from __future__ import annotations

from datetime import UTC, datetime

from safehold import units

__all__ = ["ago", "duration", "size", "when"]


def size(value: int | None) -> str:
    """``value`` bytes in binary units ("3.2 MiB"); "-" when unknown."""
    return units.size(value)


def duration(seconds: float | None) -> str:
    """``seconds`` as "4.1 s", "3 min 2 s" or "1 h 4 min"; "-" when unknown."""
    return units.duration(seconds)


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
