"""Schedules: when a plan wants to run, as a sequence of slot times.

A schedule is written the way cron tables and Cloud Foundry's service-backup write it:

- five fields, ``minute hour day-of-month month day-of-week`` (``30 2 * * *``);
- six fields with **seconds first**, as robfig/cron reads service-backup's
  ``cron_schedule`` (``0 */5 * * * *`` is every five minutes, on the minute);
- the usual names ``@hourly``, ``@daily`` (= ``@midnight``), ``@weekly``, ``@monthly``,
  ``@yearly`` (= ``@annually``);
- a **spread** so that a thousand plans do not start in the same second: ``H`` in any field
  stands for a value chosen from the plan's name (``H 3 * * *`` runs once between 03:00 and
  03:59, always at the same minute for the same plan; ``H/15`` every 15 minutes from a
  per-plan offset; ``H(0-29)`` within a range), and ``@hourly-random``, ``@daily-random``,
  ``@weekly-random``, ``@monthly-random`` spread to the second;
- ``@every 90m`` (robfig's form: units ``d``, ``h``, ``m``, ``s``): slots a fixed interval
  apart, at a per-plan offset from the Unix epoch, so that every process computes the same
  slot times whenever it starts.

The spread is a function of the plan's key (``project/name``) only: it is "random" across
plans and stable for one plan, which is what a ledger of slots needs (every process, every
restart, must agree on a plan's slot times). Field expressions are evaluated by croniter
(its ``H`` hashing included); a time zone (IANA name) says which wall clock the fields
read; slot times are returned in UTC.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

from safehold.errors import UsageError

__all__ = ["Schedule", "parse_every", "parse_schedule"]

# Spread to the second: seconds-first six-field forms (see the module docstring).
_RANDOM_ALIASES = {
    "@hourly-random": "H H * * * *",
    "@daily-random": "H H H * * *",
    "@midnight-random": "H H H(0-2) * * *",
    "@weekly-random": "H H H * * H",
    "@monthly-random": "H H H H(1-28) * *",
    "@yearly-random": "H H H H(1-28) H *",
    "@annually-random": "H H H H(1-28) H *",
}
_PLAIN_ALIASES = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")
# 'H', 'H/15', 'H(0-29)': an H that is not part of a name such as 'thu'.
_HASHED_RE = re.compile(r"(?<![a-z])h(?![a-z])", re.IGNORECASE)
_EVERY_RE = re.compile(r"@every\s+(\S+)")
_EVERY_PART_RE = re.compile(r"([0-9]+)(d|h|m|s)")
_EVERY_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_HINT = (
    "write five cron fields (minute hour day month weekday, e.g. '30 2 * * *'), six with "
    "seconds first ('0 */5 * * * *'), a name (@daily, @daily-random) or '@every 90m'"
)


@dataclass(frozen=True)
class Schedule:
    """A plan's schedule, resolved: it lists the plan's slot times.

    ``expression`` is what the configuration says; ``key`` is the plan's identity that
    chooses the spread (``H``, ``-random``, ``@every``'s offset); ``timezone`` is the wall
    clock the cron fields read (``@every`` ignores it: it counts elapsed seconds).
    """

    expression: str
    key: str
    timezone: str = "UTC"
    _cron: str | None = field(default=None, repr=False, compare=False)
    _seconds_first: bool = field(default=False, repr=False, compare=False)
    _hashed: bool = field(default=False, repr=False, compare=False)
    _every: int | None = field(default=None, repr=False, compare=False)
    # One croniter per schedule, moved to each new start: building one parses and expands
    # the expression, which cost more than the search itself (a tick over 10,000 plans).
    # croniter keeps its position in the object, so uses are serialised by the lock.
    _cached: list[croniter] = field(default_factory=list, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def interval(self) -> int | None:
        """The fixed period in seconds of an ``@every`` schedule, ``None`` for cron ones."""
        return self._every

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _offset(self) -> int:
        assert self._every is not None
        return zlib.crc32(self.key.encode()) % self._every

    def _search(self, start: datetime, *, forward: bool) -> datetime:
        assert self._cron is not None
        # Plans with the same unspread schedule share their answers (every plan at
        # @hourly is due at once: one search serves them all).
        key = self.key if self._hashed else ""
        return _shared_search(self, key, start, forward)

    def _search_now(self, start: datetime, forward: bool) -> datetime:
        assert self._cron is not None
        with self._lock:
            if not self._cached:
                self._cached.append(
                    croniter(
                        self._cron,
                        start.astimezone(self._zone()),
                        ret_type=datetime,  # type: ignore[arg-type]  # stubs know only float
                        hash_id=self.key.encode() if self._hashed else None,
                        second_at_beginning=self._seconds_first,
                    )
                )
            it = self._cached[0]
            it.set_current(start.astimezone(self._zone()), force=True)
            found = it.get_next(datetime) if forward else it.get_prev(datetime)
        assert isinstance(found, datetime)
        return found.astimezone(UTC)

    def next_after(self, after: datetime) -> datetime:
        """The first slot strictly after ``after`` (an aware datetime), in UTC."""
        _require_aware(after)
        if self._every is not None:
            offset = self._offset()
            ts = int(after.timestamp())
            n = (ts - offset) // self._every + 1
            return datetime.fromtimestamp(n * self._every + offset, UTC)
        return self._search(after, forward=True)

    def previous_at_or_before(self, moment: datetime) -> datetime:
        """The last slot at or before ``moment``, in UTC."""
        _require_aware(moment)
        if self._every is not None:
            offset = self._offset()
            ts = int(moment.timestamp())
            n = (ts - offset) // self._every
            return datetime.fromtimestamp(n * self._every + offset, UTC)
        # croniter's get_prev is strictly before its start; start a microsecond later.
        return self._search(moment + timedelta(microseconds=1), forward=False)

    def slots(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Every slot in ``(after, until]``, oldest first, in UTC.

        A long downtime can span many slots: callers that only need the newest ones
        (catch-up runs once, never once per missed slot) should bound ``after`` first.
        """
        slot = self.next_after(after)
        while slot <= until:
            yield slot
            slot = self.next_after(slot)

    def recent_slots(
        self, after: datetime, until: datetime, limit: int
    ) -> tuple[list[datetime], bool]:
        """The newest ``limit`` slots in ``(after, until]``, oldest first, and whether
        older ones were left out. Walks back from ``until``, so the work is bounded by
        ``limit`` however long ago ``after`` was."""
        found: list[datetime] = []
        slot = self.previous_at_or_before(until)
        while slot > after:
            if len(found) == limit:
                return found[::-1], True
            found.append(slot)
            slot = self.previous_at_or_before(slot - timedelta(microseconds=1))
        return found[::-1], False

    def describe(self) -> str:
        """The schedule in words for listings (``safehold plans``)."""
        zone = "" if self.timezone == "UTC" else f" ({self.timezone})"
        if self._every is not None:
            return f"every {_format_seconds(self._every)}{zone}"
        if self._cron == self.expression:
            return f"cron {self.expression}{zone}"
        return f"{self.expression} (cron {self._cron}){zone}"


_SHARED: dict[tuple[str, str, bool, str, datetime, bool], datetime] = {}
_SHARED_LOCK = threading.Lock()
_SHARED_MAX = 65_536


def _shared_search(schedule: Schedule, key: str, start: datetime, forward: bool) -> datetime:
    """A schedule search, remembered for every schedule with the same fields, time zone
    and spread key (a bounded memory, emptied when full)."""
    assert schedule._cron is not None
    memo = (schedule._cron, schedule.timezone, schedule._seconds_first, key, start, forward)
    with _SHARED_LOCK:
        found = _SHARED.get(memo)
    if found is None:
        found = schedule._search_now(start, forward)
        with _SHARED_LOCK:
            if len(_SHARED) >= _SHARED_MAX:
                _SHARED.clear()
            _SHARED[memo] = found
    return found


def parse_every(text: str) -> int:
    """Seconds in a robfig-style interval (``90m``, ``1h30m``, ``45s``, ``2d``)."""
    pos = 0
    total = 0
    for match in _EVERY_PART_RE.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _EVERY_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise UsageError(
            f"interval {text!r} is not a duration like 90m, 1h30m, 45s or 2d",
            hint="units: d = days, h = hours, m = minutes, s = seconds",
        )
    if total <= 0:
        raise UsageError(f"interval {text!r} must be longer than zero", hint=_HINT)
    return total


def parse_schedule(expression: str, *, key: str, timezone: str = "UTC") -> Schedule:
    """Check ``expression`` and resolve it for the plan ``key``; errors name the fix."""
    text = " ".join(str(expression).split())
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UsageError(
            f"unknown time zone {timezone!r}",
            hint="use an IANA name such as UTC, Europe/Berlin or America/New_York",
        ) from exc
    lowered = text.lower()
    every = _EVERY_RE.fullmatch(lowered)
    if every:
        seconds = parse_every(every.group(1))
        return Schedule(text, key, timezone, _every=seconds)
    if lowered.startswith("@") and lowered not in _RANDOM_ALIASES:
        if lowered not in _PLAIN_ALIASES:
            raise UsageError(f"unknown schedule name {text!r}", hint=_HINT)
        return _checked(Schedule(text, key, timezone, _cron=lowered))
    cron = _RANDOM_ALIASES.get(lowered, text)
    fields = cron.split()
    if len(fields) not in (5, 6):
        raise UsageError(f"schedule {text!r} has {len(fields)} fields, not 5 or 6", hint=_HINT)
    hashed = _HASHED_RE.search(cron) is not None
    return _checked(
        Schedule(text, key, timezone, _cron=cron, _seconds_first=len(fields) == 6, _hashed=hashed)
    )


def _checked(schedule: Schedule) -> Schedule:
    """Evaluate once so that a bad field fails when the configuration loads, not later."""
    try:
        schedule.next_after(datetime(2000, 1, 1, tzinfo=UTC))
    except (CroniterError, ValueError, KeyError) as exc:
        raise UsageError(f"schedule {schedule.expression!r}: {exc}", hint=_HINT) from exc
    return schedule


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None:
        raise ValueError("schedule times must carry a time zone (use UTC)")


def _format_seconds(seconds: int) -> str:
    parts = []
    for unit, size in _EVERY_UNITS.items():
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            parts.append(f"{count}{unit}")
    return "".join(parts)
