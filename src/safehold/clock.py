"""The only module that reads the time, so that tests can substitute a fake clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, delta: timedelta | float) -> None:
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
        scaled = self.origin + (time.time() - self.origin) * self.speed
        return datetime.fromtimestamp(scaled, UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    @classmethod
    def parse(cls, text: str) -> ScaledClock:
        """``ORIGIN:SPEED`` (``1765051200:60``) as a clock; ValueError if malformed."""
        origin, _, speed = text.partition(":")
        return cls(float(origin), float(speed))


SYSTEM_CLOCK = SystemClock()


def utcnow() -> datetime:
    return SYSTEM_CLOCK.now()
