"""One verification slice: which packs to re-read, reading them, and what was found.

A slice is the repository's side of verification. It is given the rotation as the
catalog holds it (:class:`PackState`, one per pack: when first seen, when last read and
what that found), lists the repository's packs, chooses the slice (:func:`choose_slice`)
and re-reads it with ``check --read-data`` limited to those packs
(:class:`~safehold.repository.check.Subset` ``packs``). The structure check and the
snapshot walk run as in every check, so a damaged pack comes back with the snapshots that
need its blobs. The result (:class:`SliceResult`) says what the catalog must record; it
holds no secret and travels as JSON from the worker's child process to the worker
(:mod:`safehold.service.verify` records it).

How much a slice reads: the rotation must read every pack within ``period``, and a slice
runs every ``interval`` seconds, so a slice reads about ``stored bytes x interval /
period`` (:func:`slice_budget`, times a margin), at least one pack. Packs are taken in
this order: damaged ones (read again at each slice until repaired or pruned, so the
failure stands while the damage does), never-read ones (oldest first seen first), then
the least recently read. Any pack that would pass its period before the next slice is
read too, whatever the budget, so a service that was down catches up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from safehold.engine.maintain.verify import run_check
from safehold.ids import PackId
from safehold.policy.duration import Duration
from safehold.repository.check import CheckOptions, CheckReport, Subset
from safehold.repository.repository import Repository

__all__ = [
    "DAMAGED",
    "OK",
    "PackState",
    "SliceResult",
    "choose_slice",
    "listed_packs",
    "read_slice",
    "slice_budget",
]

OK = "ok"
DAMAGED = "damaged"
# The codes by which a read pack is damaged. "pack-missing" is not one: a pack that
# vanished while the slice read it was pruned, and leaves the rotation at the next slice.
_DAMAGE = frozenset({"pack-hash", "pack-header", "blob-damaged", "pack-index-mismatch"})
_MESSAGES_KEPT = 20  # errors carried to the run's record; the check lists them all


@dataclass(frozen=True)
class PackState:
    """A pack as the rotation knows it (a ``verify_packs`` row)."""

    pack_id: str  # hex
    size: int
    first_seen: datetime
    last_read: datetime | None = None
    last_result: str | None = None

    def to_json(self) -> list[Any]:
        """The state as the worker hands it to its child: a compact row."""
        return [
            self.pack_id,
            self.size,
            self.first_seen.isoformat(),
            self.last_read.isoformat() if self.last_read else None,
            self.last_result,
        ]

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> PackState:
        """The state from :meth:`to_json`'s row."""
        pack_id, size, first_seen, last_read, result = row
        return cls(
            pack_id=str(pack_id),
            size=int(size),
            first_seen=datetime.fromisoformat(first_seen),
            last_read=datetime.fromisoformat(last_read) if last_read else None,
            last_result=result,
        )


def slice_budget(total_bytes: int, interval: float, period: float, margin: float) -> int:
    """Bytes a slice reads so that ``period`` seconds of slices ``interval`` apart read
    ``total_bytes``: their share, times ``margin`` (all of it when the interval is as
    long as the period)."""
    if total_bytes <= 0:
        return 0
    share = 1.0 if period <= 0 else min(1.0, interval / period)
    return min(total_bytes, math.ceil(total_bytes * share * margin))


def choose_slice(
    listed: Mapping[str, int],
    known: Mapping[str, PackState],
    *,
    budget: int,
    period: Duration,
    next_slice: datetime,
    now: datetime,
) -> list[str]:
    """The packs of ``listed`` (hex id -> size) to read now, in reading order.

    ``known`` is the rotation (a pack it lacks is new: first seen ``now``). Taken in
    order (damaged, never read, least recently read) until ``budget`` bytes, at least one
    pack; plus every pack whose last read (or first sighting) is older than ``period``
    before ``next_slice``: it would be overdue before the next slice could read it.
    """

    def state(pack_id: str) -> PackState:
        return known.get(pack_id) or PackState(pack_id, listed[pack_id], now)

    def order(pack_id: str) -> tuple[int, datetime, str]:
        s = state(pack_id)
        if s.last_result == DAMAGED:
            return (0, s.last_read or s.first_seen, pack_id)
        if s.last_read is None:
            return (1, s.first_seen, pack_id)
        return (2, s.last_read, pack_id)

    due_by = period.subtract_from(next_slice)
    chosen: list[str] = []
    taken = 0
    for pack_id in sorted(listed, key=order):
        s = state(pack_id)
        overdue = (s.last_read or s.first_seen) <= due_by
        if taken < budget or not chosen or overdue or s.last_result == DAMAGED:
            chosen.append(pack_id)
            taken += listed[pack_id]
        # Past the budget every pack is still looked at: the order cannot say whether a
        # later one is overdue (a new pack comes before an old one).
    return chosen


def listed_packs(repo: Repository) -> dict[str, int]:
    """The repository's packs the rotation covers, hex id -> size: every stored pack an
    index lists. Unindexed packs (garbage waiting for prune, or an interrupted backup's)
    hold nothing a snapshot needs and are left out, as ``check --read-data`` leaves them."""
    repo.load_index()
    indexed = repo.index.packs
    return {pack.hex(): size for pack, size in repo.list_packs().items() if pack in indexed}


@dataclass
class SliceResult:
    """What a slice read and found: what the catalog records, and the run's outcome."""

    listed: dict[str, int]  # every pack in the rotation now, hex id -> size
    read: dict[str, str] = field(default_factory=dict)  # hex id -> OK | DAMAGED
    bytes_read: int = 0
    budget: int = 0
    damaged_packs: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)  # affected by any error found
    errors: list[str] = field(default_factory=list)  # the check's errors, the first few
    error_count: int = 0

    @property
    def ok(self) -> bool:
        """Whether the check found no error (damage, or a structure problem)."""
        return not self.error_count

    def describe_damage(self) -> str:
        """One line for the run's error: the damaged packs and the snapshots affected."""
        parts = []
        if self.damaged_packs:
            packs = ", ".join(p[:8] for p in self.damaged_packs[:10])
            more = len(self.damaged_packs) - 10
            parts.append(f"damaged pack(s) {packs}" + (f" and {more} more" if more > 0 else ""))
        if self.snapshots:
            snaps = ", ".join(s[:8] for s in self.snapshots[:20])
            more = len(self.snapshots) - 20
            parts.append(f"snapshots affected: {snaps}" + (f" and {more} more" if more > 0 else ""))
        else:
            parts.append("no snapshot needs the damaged data")
        head = f"verification found {self.error_count} error(s)"
        first = f" (first: {self.errors[0]})" if self.errors else ""
        return f"{head}: {'; '.join(parts)}{first}"

    def to_json(self) -> dict[str, Any]:
        """The result as the child prints it (``safehold --json verify`` too)."""
        return {
            "operation": "verify",
            "outcome": "success" if self.ok else "damaged",
            "listed": self.listed,
            "read": self.read,
            "bytes_read": self.bytes_read,
            "budget": self.budget,
            "damaged_packs": self.damaged_packs,
            "snapshots": self.snapshots,
            "errors": self.errors,
            "error_count": self.error_count,
            "error": "" if self.ok else self.describe_damage(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SliceResult:
        """The result a child printed (:meth:`to_json`)."""
        return cls(
            listed={str(k): int(v) for k, v in dict(doc.get("listed") or {}).items()},
            read={str(k): str(v) for k, v in dict(doc.get("read") or {}).items()},
            bytes_read=int(doc.get("bytes_read") or 0),
            budget=int(doc.get("budget") or 0),
            damaged_packs=[str(p) for p in doc.get("damaged_packs") or []],
            snapshots=[str(s) for s in doc.get("snapshots") or []],
            errors=[str(e) for e in doc.get("errors") or []],
            error_count=int(doc.get("error_count") or 0),
        )


def read_slice(
    repo: Repository,
    known: Iterable[PackState],
    *,
    period: Duration,
    interval: float,
    margin: float,
    now: datetime,
    next_slice: datetime,
    threads: int = 4,
) -> SliceResult:
    """List the repository's packs, choose a slice and re-read it (a check with
    ``--read-data`` of those packs, under the check's shared lock: backups go on)."""
    listed = listed_packs(repo)
    by_id = {s.pack_id: s for s in known}
    period_seconds = (now - period.subtract_from(now)).total_seconds()
    budget = slice_budget(sum(listed.values()), interval, period_seconds, margin)
    chosen = choose_slice(
        listed, by_id, budget=budget, period=period, next_slice=next_slice, now=now
    )
    subset = Subset(packs=frozenset(PackId(bytes.fromhex(p)) for p in chosen))
    report = run_check(repo, CheckOptions(read_data=True, subset=subset, threads=threads))
    return _result(listed, budget, report)


def _result(listed: dict[str, int], budget: int, report: CheckReport) -> SliceResult:
    damaged = sorted(
        {p.pack for p in report.errors if p.code in _DAMAGE and p.pack and p.pack in listed}
    )
    read = {pack.hex(): OK for pack in report.read_pack_ids if pack.hex() in listed}
    for pack in damaged:
        if pack in read:
            read[pack] = DAMAGED
    errors = report.errors
    return SliceResult(
        listed=listed,
        read=read,
        bytes_read=report.bytes_read,
        budget=budget,
        damaged_packs=damaged,
        snapshots=sorted({p.snapshot for p in errors if p.snapshot}),
        errors=[str(p) for p in errors[:_MESSAGES_KEPT]],
        error_count=len(errors),
    )
