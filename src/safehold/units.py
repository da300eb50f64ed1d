"""How safehold writes sizes and durations for people, in one way everywhere.

The command line, the dashboard, the e-mail reports and the alerts all show bytes and
spans of time; a reader comparing an alert ("over the RPO target of 1 d 0 h") with the
dashboard's card or the report must see the same words for the same value. Binary units
(KiB = 1024 bytes) as restic and borg print them.
"""

from __future__ import annotations

__all__ = ["duration", "size"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(value: float | None, *, places: int = 1, unknown: str = "-") -> str:
    """``value`` bytes in binary units ("3.2 MiB", whole bytes as "512 B");
    ``unknown`` for None. ``places``: the decimals of the larger units."""
    if value is None:
        return unknown
    amount = float(value)
    for unit in _UNITS:
        if abs(amount) < 1024 or unit == _UNITS[-1]:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.{places}f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable: the loop returns at its last unit")


def duration(seconds: float | None, *, unknown: str = "-") -> str:
    """``seconds`` as "4.1 s", "3 min 2 s", "1 h 4 min", "2 d 3 h" or "15 min"
    (two units at most, the smaller left out when it is zero, the rest rounded away);
    ``unknown`` for None. Negative spans keep their sign."""
    if seconds is None:
        return unknown
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return _two(days, "d", hours, "h")
    if hours:
        return _two(hours, "h", minutes, "min")
    return _two(minutes, "min", secs, "s")


def _two(big: int, big_unit: str, small: int, small_unit: str) -> str:
    # "15 min", not "15 min 0 s": targets and schedules are mostly round.
    return f"{big} {big_unit}" + (f" {small} {small_unit}" if small else "")
