"""The only module that reads the time, so that tests can substitute a fake clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Where time comes from: wall-clock ``now`` (aware, UTC) and ``monotonic`` seconds, so that
    tests can pass a :class:`FakeClock`."""

    def now(self) -> datetime:
        """The wall-clock time, timezone-aware in UTC."""

    def monotonic(self) -> float:
        """Seconds of a clock that never goes back, for measuring intervals."""


class SystemClock:
    """The real clock: UTC wall time and ``time.monotonic``."""

    def now(self) -> datetime:
        """The system's time, in UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 0.0

    def now(self) -> datetime:
        """The time the clock was set to (2026-01-01 UTC unless given), plus every advance."""
        return self._now

    def monotonic(self) -> float:
        """Seconds advanced since the clock was made."""
        return self._mono

    def advance(self, delta: timedelta | float) -> None:
        """Move both readings forward by ``delta`` (a timedelta or seconds)."""
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


SYSTEM_CLOCK = SystemClock()


def utcnow() -> datetime:
    """The current time in UTC from the system clock."""
    return SYSTEM_CLOCK.now()
