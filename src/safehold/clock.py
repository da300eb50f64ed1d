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


class ScaledClock:
    """Wall time running ``speed`` times faster from ``origin`` on: ``now`` is
    ``origin + (real now - origin) * speed``. Every process given the same origin and speed
    agrees on the time, so several real ``safehold serve`` processes can play hours of
    schedules in minutes (the service's tests: ``SAFEHOLD_TEST_CLOCK=ORIGIN:SPEED``, the
    origin in Unix seconds). ``monotonic`` is not scaled: it measures real waits."""

    def __init__(self, origin: float, speed: float) -> None:
        if speed <= 0:
            raise ValueError("a clock's speed must be above zero")
        self.origin = origin
        self.speed = speed

    def now(self) -> datetime:
        """The scaled wall time, in UTC."""
        scaled = self.origin + (time.time() - self.origin) * self.speed
        return datetime.fromtimestamp(scaled, UTC)

    def monotonic(self) -> float:
        """Real monotonic seconds (waits are not scaled)."""
        return time.monotonic()

    @classmethod
    def parse(cls, text: str) -> ScaledClock:
        """``ORIGIN:SPEED`` (``1765051200:60``) as a clock; ValueError if malformed."""
        origin, _, speed = text.partition(":")
        return cls(float(origin), float(speed))


SYSTEM_CLOCK = SystemClock()


def utcnow() -> datetime:
    """The current time in UTC from the system clock."""
    return SYSTEM_CLOCK.now()
