"""The storage's own clock: the ServerClock capability and its lookup through wrappers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from safehold.clock import FakeClock
from safehold.storage.base import clock_reading, http_date
from safehold.storage.capabilities import ServerClock, storage_time
from safehold.storage.local import TEMP_PREFIX, LocalStorage
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import FaultyStorage, LimitedStorage, RetryingStorage

SKEWED = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)


def test_lookup_goes_through_every_wrapper() -> None:
    backend = MemoryStorage(clock=FakeClock(SKEWED))
    stack = RetryingStorage(LimitedStorage(FaultyStorage(backend), 4))
    assert storage_time(stack) == SKEWED
    assert isinstance(backend, ServerClock)
    assert not isinstance(stack, ServerClock)  # wrappers pass it on by being unwrapped


def test_a_storage_without_a_clock_gives_none() -> None:
    assert storage_time(RetryingStorage(MemoryStorage())) is None


class _BrokenClock(MemoryStorage):
    def server_time(self) -> datetime | None:
        raise RuntimeError("a bug in a backend's reading")


class _NaiveClock(MemoryStorage):
    def server_time(self) -> datetime | None:
        return datetime(2030, 1, 1, 12, 0, 0)


class _OtherZone(MemoryStorage):
    def server_time(self) -> datetime | None:
        return datetime(2030, 1, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))


def test_a_failing_reading_is_none_and_every_reading_is_utc() -> None:
    assert storage_time(LimitedStorage(_BrokenClock(), 1)) is None
    assert storage_time(_NaiveClock()) == datetime(2030, 1, 1, 12, tzinfo=UTC)
    found = storage_time(_OtherZone())
    assert found == datetime(2030, 1, 1, 12, tzinfo=UTC) and found.tzinfo is UTC


def test_clock_reading_takes_the_midpoint_and_half_the_resolution() -> None:
    stamp = datetime(2030, 1, 1, tzinfo=UTC)
    # A 1-second Date taken during a call of 0.4 s: the best guess of the server's time
    # when the call ended is the stamp + 0.5 s (truncation) + 0.2 s (after the midpoint).
    assert clock_reading(stamp, 10.0, 10.4, resolution=1.0) == stamp + timedelta(seconds=0.7)
    assert clock_reading(stamp, 10.0, 10.0) == stamp


def test_http_date() -> None:
    assert http_date("Sun, 06 Dec 2026 14:21:52 GMT") == datetime(
        2026, 12, 6, 14, 21, 52, tzinfo=UTC
    )
    assert http_date(None) is None
    assert http_date("") is None
    assert http_date("yesterday at noon") is None


def test_local_reading_is_the_file_systems_time_and_cleans_up(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "repo", create=True)
    before = datetime.now(UTC)
    found = storage_time(RetryingStorage(store))
    after = datetime.now(UTC)
    assert found is not None
    assert before - timedelta(seconds=1) <= found <= after + timedelta(seconds=1)
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_local_reading_where_nothing_can_be_written_is_none(tmp_path: Path) -> None:
    assert storage_time(LocalStorage(tmp_path / "missing")) is None
