"""Which snapshots ``forget`` keeps: restic's keep rules as a pure function.

:func:`apply_retention` takes snapshots, a :class:`RetentionPolicy` and ``now``, and
returns which to keep, which to remove and why each kept one stays. It reads neither the
clock nor the storage, so a dry run and the real run decide the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from safehold.errors import UsageError
from safehold.policy.duration import Duration

__all__ = [
    "RetentionItem",
    "RetentionPolicy",
    "RetentionResult",
    "apply_retention",
    "from_osb",
    "group_items",
    "keep_tag_sets",
]


class RetentionItem(Protocol):
    """What retention needs to know about a snapshot.

    ``id`` is unique within one call; ``time`` is timezone-aware (a naive time has no
    defined instant, so it cannot be ordered against the others or against ``now``).
    Read-only properties, so frozen dataclasses and named tuples qualify.
    """

    @property
    def id(self) -> str:
        """Unique among the items of one call."""

    @property
    def time(self) -> datetime:
        """When the snapshot was taken (timezone-aware)."""

    @property
    def tags(self) -> Sequence[str]:
        """Its tags, for ``keep_tags``."""


T = TypeVar("T", bound=RetentionItem)
G = TypeVar("G")
K = TypeVar("K", bound=Hashable)

_COUNT_FIELDS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)
_WITHIN_FIELDS = (
    "keep_within",
    "keep_within_hourly",
    "keep_within_daily",
    "keep_within_weekly",
    "keep_within_monthly",
    "keep_within_yearly",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPolicy:
    """Keep rules in the manner of ``restic forget``; a snapshot stays if any rule keeps it.

    Counts are ``None`` or ``0`` (rule off), a positive number, or ``-1`` (unlimited: one
    per bucket for the whole history). Durations are ``None`` or a zero duration (rule
    off) or a span back from ``now``. ``keep_tags`` holds tag sets; a snapshot that
    carries every tag of at least one set is kept.
    """

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: Duration | None = None
    keep_within_hourly: Duration | None = None
    keep_within_daily: Duration | None = None
    keep_within_weekly: Duration | None = None
    keep_within_monthly: Duration | None = None
    keep_within_yearly: Duration | None = None
    keep_tags: tuple[frozenset[str], ...] = ()

    def __post_init__(self) -> None:
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < -1:
                raise UsageError(
                    f"{name} must be a whole number >= 0, or -1 for unlimited; got {value!r}"
                )
        for tag_set in self.keep_tags:
            # An empty set is carried by every snapshot, so it would keep everything:
            # almost certainly a stray comma or an empty option, not the user's intent.
            if not tag_set:
                raise UsageError(
                    "keep_tags contains an empty tag set, which would keep every snapshot",
                    hint="list at least one tag per set, e.g. keep_tags = [[prod]]",
                )

    def is_empty(self) -> bool:
        """True when no rule is set, i.e. applying the policy would keep nothing."""
        if any(getattr(self, name) for name in _COUNT_FIELDS):
            return False
        if any(_is_set(getattr(self, name)) for name in _WITHIN_FIELDS):
            return False
        return not self.keep_tags


@dataclass(frozen=True, slots=True)
class RetentionResult(Generic[T]):
    """The decision: ``keep`` and ``remove`` partition the input, both newest first.

    ``reasons`` maps the id of every kept snapshot (and only those) to the rules that kept
    it, in a fixed order: tag sets, ``within``, last, hourly ... yearly, then the
    ``<bucket> within`` rules.
    """

    keep: list[T]
    remove: list[T]
    reasons: dict[str, list[str]] = field(default_factory=dict)


def apply_retention(
    items: Iterable[T],
    policy: RetentionPolicy,
    now: datetime,
    *,
    allow_empty: bool = False,
) -> RetentionResult[T]:
    """Decide which of ``items`` (one series, see :func:`group_items`) to keep.

    Follows restic's ``forget`` semantics, with the differences marked below:

    - Snapshots are walked newest first. Ties in time are broken by id, largest first, so
      the decision does not depend on the order of ``items``.
    - ``keep_last N`` keeps the N newest.
    - ``keep_hourly/daily/weekly/monthly/yearly N`` keep the newest snapshot of each of the
      N newest distinct hours / days / ISO weeks / months / years that have a snapshot.
      Buckets are taken on the snapshot's time converted to UTC (restic uses each
      snapshot's own wall clock), so a day is a UTC day and the same instant lands in the
      same bucket however its zone was written.
    - ``keep_within D`` keeps every snapshot strictly newer than ``now - D``. The span is
      measured back from ``now``, NOT from the newest snapshot as restic does: if backups
      stopped longer ago than D, this rule alone keeps nothing, so pair it with
      ``keep_last`` where that matters. Calendar steps (``1m`` back from 31 March) are
      taken on ``now``'s own wall clock, so pass ``now`` in the zone whose calendar counts.
    - ``keep_within_<bucket> D`` keeps the newest snapshot of every bucket among the
      snapshots strictly newer than ``now - D`` (again measured from ``now``).
    - ``keep_tags`` keeps snapshots carrying all tags of any one set; these do not use up
      any count.

    Every rule counts independently: the kept set is the union of what each rule keeps.

    An empty policy would remove every snapshot, so it raises
    :class:`~safehold.errors.UsageError` unless ``allow_empty`` is true, in which case
    everything is removed (for example to forget a decommissioned source on purpose).

    Raises ``ValueError`` for a naive ``now`` or snapshot time, or a repeated id: those
    are bugs in the caller, not in the user's input.
    """
    _require_aware(now, "now")
    if policy.is_empty() and not allow_empty:
        raise UsageError(
            "the retention policy has no keep rule, so it would remove every snapshot",
            hint="set at least one rule, e.g. keep_last 1, keep_daily 7 or keep_within 30d",
        )
    ordered = _newest_first(items)

    counters = [
        _Counter(reason, count, bucket)
        for reason, count, bucket in (
            ("last snapshot", policy.keep_last, None),
            ("hourly snapshot", policy.keep_hourly, _hour),
            ("daily snapshot", policy.keep_daily, _day),
            ("weekly snapshot", policy.keep_weekly, _week),
            ("monthly snapshot", policy.keep_monthly, _month),
            ("yearly snapshot", policy.keep_yearly, _year),
        )
        if count
    ]
    within_cutoff = (
        _cutoff(policy.keep_within, now)
        if policy.keep_within is not None and _is_set(policy.keep_within)
        else None
    )
    within_buckets = [
        _WithinBucket(f"{name} within {span}", _cutoff(span, now), bucket)
        for name, span, bucket in (
            ("hourly", policy.keep_within_hourly, _hour),
            ("daily", policy.keep_within_daily, _day),
            ("weekly", policy.keep_within_weekly, _week),
            ("monthly", policy.keep_within_monthly, _month),
            ("yearly", policy.keep_within_yearly, _year),
        )
        if span is not None and _is_set(span)
    ]

    keep: list[T] = []
    remove: list[T] = []
    reasons: dict[str, list[str]] = {}
    for position, (at, item) in enumerate(ordered):
        tags = set(item.tags)
        matched = [
            f"tag set {_format_tags(tag_set)}" for tag_set in policy.keep_tags if tag_set <= tags
        ]
        if within_cutoff is not None and at > within_cutoff:
            matched.append(f"within {policy.keep_within}")
        for counter in counters:
            if counter.offer(position, at):
                matched.append(counter.reason)
        for rule in within_buckets:
            if at > rule.cutoff and rule.offer(at):
                matched.append(rule.reason)
        if matched:
            keep.append(item)
            reasons[item.id] = matched
        else:
            remove.append(item)
    return RetentionResult(keep=keep, remove=remove, reasons=reasons)


def group_items(items: Iterable[G], key: Callable[[G], K]) -> dict[K, list[G]]:
    """Split ``items`` into series by ``key`` (e.g. ``lambda s: (s.host, tuple(s.paths))``).

    Retention compares snapshots within one series only; callers apply it per group.
    Groups appear in the order their first item does, and items keep their input order.
    """
    groups: dict[K, list[G]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def keep_tag_sets(specs: Iterable[str]) -> tuple[frozenset[str], ...]:
    """``keep_tags`` from ``TAG[,TAG]`` specs as ``forget --keep-tag`` and a plan's
    ``retention:`` block write them (blank names dropped)."""
    return tuple(frozenset(t.strip() for t in spec.split(",") if t.strip()) for spec in specs)


def from_osb(retention_type: str, period: int) -> RetentionPolicy:
    """Translate an OSB backup-manager plan's retention into a policy.

    OSB's ``FILES N`` keeps the N newest restore points (``keep_last N``); ``DAYS N`` and
    ``HOURS N`` keep those younger than N days or hours (``keep_within Nd`` / ``Nh``,
    measured from ``now`` as OSB does). The type is matched case-insensitively.
    """
    kind = retention_type.strip().upper()
    if kind not in ("FILES", "DAYS", "HOURS"):
        raise UsageError(
            f"unknown OSB retention type {retention_type!r}",
            hint="use FILES, DAYS or HOURS",
        )
    # A period of 0 would be an empty policy, i.e. "delete everything"; OSB never means that.
    if not isinstance(period, int) or isinstance(period, bool) or period < 1:
        raise UsageError(
            f"OSB retention period must be a whole number >= 1, not {period!r}",
            hint=f"e.g. {kind} 30",
        )
    if kind == "FILES":
        return RetentionPolicy(keep_last=period)
    if kind == "DAYS":
        return RetentionPolicy(keep_within=Duration(days=period))
    return RetentionPolicy(keep_within=Duration(hours=period))


# --- internals ---------------------------------------------------------------------------

_Bucket = Callable[[datetime], Hashable]


def _hour(t: datetime) -> Hashable:
    return (t.year, t.month, t.day, t.hour)


def _day(t: datetime) -> Hashable:
    return (t.year, t.month, t.day)


def _week(t: datetime) -> Hashable:
    # ISO year, not calendar year: 1 January may belong to the previous year's last week.
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _month(t: datetime) -> Hashable:
    return (t.year, t.month)


def _year(t: datetime) -> Hashable:
    return t.year


class _Counter:
    """A counted bucket rule: keeps the first (newest) snapshot of each new bucket."""

    def __init__(self, reason: str, count: int, bucket: _Bucket | None) -> None:
        self.reason = reason
        self.remaining = count  # -1 never reaches 0: unlimited
        self.bucket = bucket  # None: every snapshot is its own bucket (keep_last)
        self.last: Hashable = None

    def offer(self, position: int, at: datetime) -> bool:
        if self.remaining == 0:
            return False
        # Items arrive newest first and UTC buckets are monotonic in time, so comparing with
        # the previous kept bucket is enough to spot the first snapshot of a new one.
        key = position if self.bucket is None else self.bucket(at)
        if key == self.last:
            return False
        self.last = key
        if self.remaining > 0:
            self.remaining -= 1
        return True


class _WithinBucket:
    """A ``keep_within_<bucket>`` rule: the newest of each bucket after ``cutoff``."""

    def __init__(self, reason: str, cutoff: datetime, bucket: _Bucket) -> None:
        self.reason = reason
        self.cutoff = cutoff
        self.bucket = bucket
        self.last: Hashable = None

    def offer(self, at: datetime) -> bool:
        key = self.bucket(at)
        if key == self.last:
            return False
        self.last = key
        return True


def _is_set(span: Duration | None) -> bool:
    return span is not None and not span.is_zero()


def _format_tags(tag_set: frozenset[str]) -> str:
    return "{" + ", ".join(sorted(tag_set)) + "}"


def _require_aware(t: datetime, what: str) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {t!r}")


def _newest_first(items: Iterable[T]) -> list[tuple[datetime, T]]:
    """Pair each item with its time in UTC and sort newest first, ties by id.

    Everything after this compares the UTC times: Python compares two datetimes that share
    a tzinfo by wall clock, ignoring ``fold``, so two ``Europe/Berlin`` times in the hour
    that repeats in autumn would order differently from the instants they denote.
    """
    seen: set[str] = set()
    paired: list[tuple[datetime, T]] = []
    for item in items:
        _require_aware(item.time, f"time of snapshot {item.id}")
        if item.id in seen:
            raise ValueError(f"snapshot id {item.id} appears more than once")
        seen.add(item.id)
        paired.append((item.time.astimezone(UTC), item))
    paired.sort(key=lambda pair: (pair[0], pair[1].id), reverse=True)
    return paired


def _cutoff(span: Duration, now: datetime) -> datetime:
    # Calendar steps happen in now's own zone (the caller's calendar); the comparison in UTC.
    moment = span.subtract_from(now)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # clamped to year 1 in a zone east of UTC
        return datetime.min.replace(tzinfo=UTC)
