"""Prune: free the space of data no snapshot needs, while backups keep running.

Prune deletes packs in two phases, so that it never deletes data that a concurrent process
is about to reference and never makes a backup wait (docs/format.md, "Prune").

Mark
====

Under a ``prune`` lock (shared: backups, restores and checks keep running; two prunes
exclude each other), prune lists the snapshots, then loads every index file, and computes
for each chain the set of blob ids its snapshots use: every tree reached from their roots
(trees count as used) and every data blob those trees name. Deduplication only reaches
inside a chain, so a pack is judged by its own chain's usage:

* a pack is **garbage** when none of its blobs is used by a snapshot of its chain;
* a pack is **mostly garbage** when the unused share of its blob bytes exceeds
  ``max_unused`` (10 % by default); its used blobs are copied, still sealed and verified
  first, into new packs of the same chain, and the old pack becomes garbage.

A blob that a snapshot needs but that has no copy in that snapshot's chain (not something
safehold writes, but possible in a damaged or hand-made repository) counts as used in every
pack that holds it, so prune never removes the last copy of anything a snapshot names. If a
snapshot needs a blob that no pack holds, prune stops before changing anything.

Then, in this order:

1. the new packs of the repack are stored (nothing references them yet);
2. index files listing exactly the doomed packs (garbage and repacked) are written, then a
   **trash record** (``trash/<id>``, :mod:`safehold.repository.trash`) naming those packs
   and those index files; from now on writers neither deduplicate against these packs nor
   adopt them, while readers still find them through the record's index files;
3. new index files describing every live pack (all indexed packs but the doomed, plus the
   new packs) are written;
4. the index files loaded in the mark are deleted, and no others: an index file a backup
   wrote meanwhile stays, and so do trash records' own.

Let *T* be the time after step 4. The trash record is then written again, so that its
``created`` time is at least *T*, and the first copy is deleted.

Sweep
=====

A trash record may be swept once no lock other than prune's own has a ``created`` time
earlier than its **sweep-after time**, ``created + lock_skew`` (5 minutes by default, a
margin for clocks of different hosts that disagree). Stale locks (see
:func:`safehold.repository.lock.is_stale`) are ignored and removed. Sweeping a record:

* the index and all snapshots are loaded again;
* a trashed pack that some current index file lists was adopted again by a backup: it is
  kept and simply dropped from the record;
* a trashed pack that holds a blob some snapshot uses and no live pack holds (in the
  snapshot's chain) is **rescued**: an index file is written for it (from its own header)
  and it is kept;
* every other trashed pack is deleted, after the record's own index files and before the
  record. A pack or index file the storage refuses to delete because a retention period
  protects it (S3 Object Lock) stays, and so does its record: a later prune deletes it
  once the period is over.

A lock that cannot be read holds back every record (it may be a live process's, damaged).

Every prune run sweeps the records of earlier runs at its start, and the record it has just
written at its end when the condition already holds. With no other process about, one run
marks and sweeps, and the space is free at once; while a backup runs, a later prune frees
it.

On local storage, prune also removes the temporary files of interrupted writes, but only
those last written before every live lock was taken and over an hour ago
(:func:`remove_stale_temp_files`), so a write in progress keeps its file.

Why this is safe
================

No pack that was indexed becomes unindexed before its sweep (the doomed packs move to
the record's own index files before the old ones go), so a snapshot is complete when it
is written and stays so until a sweep deletes one of its packs. A writer takes its lock,
lists the trash, then loads the index, dropping trashed packs: a writer whose lock was
created after the record (plus the skew margin) therefore never references a trashed
blob it has not written itself. A writer whose lock was created earlier may have
deduplicated against a doomed pack; the sweep waits until its lock is gone. When it is
gone the process has finished: every snapshot it saved is stored and seen by the sweep,
which rescues any trashed pack such a snapshot needs. A backup that adopted a trashed pack
before the record existed wrote an index file for it, and a pack that an index file other
than a record's own lists is never deleted. A lock that is stale belongs to a process that
is gone or that stopped refreshing it for half an hour; like every lock-based scheme, this
one trusts that such a process no longer writes. docs/format.md, section 16, gives the
whole argument.

Crash safety: a crash before step 2 leaves new packs that no index lists (backups adopt
them) and perhaps trash index files without a record (duplicates of the old index, which
the next mark loads and replaces); between 2 and 4 both old and new index files exist; after
4 the first record (its ``created`` slightly before *T*, within the skew margin in any
realistic run) guards the packs until the next prune. A sweep writes rescue index files
before deleting anything and deletes a record's index files, then its packs, then the
record, so an interrupted sweep is finished by the next one and no index ever lists a
deleted pack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from safehold.errors import (
    ClockSkew,
    IntegrityError,
    ObjectNotFound,
    ObjectRetained,
    SafeholdError,
    UsageError,
)
from safehold.repository import lock as lockmod
from safehold.repository import tree as t
from safehold.repository.format import T_INDEX
from safehold.repository.index import Index, PackRecord, decode_index
from safehold.repository.progress import NoProgress, ProgressSink
from safehold.repository.repository import Repository, pack_name
from safehold.repository.sealed_packs import SealedPackWriter
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import TrashRecord, list_trash, write_trash
from safehold.storage.base import storage_time

__all__ = [
    "DEFAULT_LOCK_SKEW",
    "DEFAULT_MAX_UNUSED",
    "TEMP_FILE_MIN_AGE",
    "MarkResult",
    "PruneOptions",
    "PruneResult",
    "SweepResult",
    "check_clock",
    "prune",
    "remove_stale_temp_files",
    "rescue_for_forget",
    "sweep",
]

DEFAULT_MAX_UNUSED = 10.0
DEFAULT_LOCK_SKEW = timedelta(minutes=5)
# How far a reading of the storage's clock may be off (one-second stamps, a round trip).
CLOCK_READING_ERROR = timedelta(seconds=2)
# Temporary files of interrupted writes (local storage) are removed once older than this
# and than every live lock (see remove_stale_temp_files).
TEMP_FILE_MIN_AGE = timedelta(hours=1)
# Index files written by prune hold at most this many blobs, so that none grows unbounded.
INDEX_FILE_MAX_BLOBS = 100_000
HEADER_THREADS = 8


@dataclass(frozen=True, kw_only=True)
class PruneOptions:
    max_unused: float = DEFAULT_MAX_UNUSED
    """Percent of a pack's blob bytes that may be unused before the pack is repacked;
    100 never repacks (only wholly unused packs are removed)."""
    lock_skew: timedelta = DEFAULT_LOCK_SKEW
    """Margin added to a trash record's time before locks are compared with it."""
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.max_unused <= 100:
            raise UsageError(f"max unused must be between 0 and 100 %, not {self.max_unused}")
        if self.lock_skew < timedelta(0):
            raise UsageError("the lock skew margin must not be negative")


@dataclass
class SweepResult:
    records_swept: int = 0
    records_waiting: int = 0
    packs_deleted: int = 0
    bytes_freed: int = 0
    packs_rescued: int = 0
    packs_readopted: int = 0  # listed by an index again: kept
    packs_gone: int = 0  # already deleted (an interrupted sweep)
    packs_waiting: int = 0  # stored packs named by records that must wait
    bytes_waiting: int = 0
    packs_retained: int = 0  # the storage refused to delete them yet (retention, legal hold)
    bytes_retained: int = 0
    stale_locks_removed: int = 0
    waiting_for: list[str] = field(default_factory=list)  # the locks a record waits for


@dataclass
class MarkResult:
    snapshots: int = 0
    packs: int = 0  # indexed packs
    bytes: int = 0
    packs_unindexed: int = 0  # stored, in no index nor trash: left for backups to adopt
    packs_garbage: int = 0
    bytes_garbage: int = 0
    packs_repacked: int = 0
    bytes_repacked: int = 0  # stored size of the packs repacked
    blobs_repacked: int = 0
    bytes_copied: int = 0  # sealed bytes of the blobs copied
    packs_written: int = 0
    bytes_written: int = 0
    index_files_written: int = 0
    index_files_deleted: int = 0
    index_files_retained: int = 0  # old index files the storage kept (retention)
    trash_record: str | None = None


@dataclass
class PruneResult:
    dry_run: bool
    earlier: SweepResult
    mark: MarkResult
    swept: SweepResult
    packs_pending: int = 0  # still named by a trash record when prune finished
    bytes_pending: int = 0
    temp_files_removed: int = 0  # leftovers of interrupted writes (local storage only)
    clock_skew_s: float | None = None  # this clock minus the storage's, if it has one

    @property
    def packs_deleted(self) -> int:
        return self.earlier.packs_deleted + self.swept.packs_deleted

    @property
    def bytes_freed(self) -> int:
        return self.earlier.bytes_freed + self.swept.bytes_freed

    @property
    def packs_rescued(self) -> int:
        return self.earlier.packs_rescued + self.swept.packs_rescued

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["packs_deleted"] = self.packs_deleted
        d["bytes_freed"] = self.bytes_freed
        d["packs_rescued"] = self.packs_rescued
        return d


# --- prune -------------------------------------------------------------------------------


def prune(
    repo: Repository, opts: PruneOptions | None = None, *, progress: ProgressSink | None = None
) -> PruneResult:
    """Sweep earlier trash, mark garbage (repacking mostly unused packs), sweep again.

    A dry run takes no lock, writes and deletes nothing, and reports what a real run would
    do (assuming no process starts meanwhile). ``progress`` hears the long phases: "mark"
    (snapshots walked), "repack" (packs copied, bytes) and "delete" (packs, bytes).
    """
    opts = opts or PruneOptions()
    progress = progress or NoProgress()
    if opts.dry_run:
        return _dry_run(repo, opts, progress)
    skew = check_clock(repo, opts.lock_skew)
    with repo.lock("prune") as held:
        own = held.info.name
        earlier = sweep(repo, own_lock=own, lock_skew=opts.lock_skew, progress=progress)
        temp_files = remove_stale_temp_files(repo, lock_skew=opts.lock_skew)
        mark, used, known = _mark(repo, opts, progress)
        swept = sweep(
            repo,
            own_lock=own,
            lock_skew=opts.lock_skew,
            progress=progress,
            _used=used,
            _known=known,
        )
    result = PruneResult(
        False, earlier, mark, swept, swept.packs_waiting, swept.bytes_waiting, temp_files
    )
    result.clock_skew_s = None if skew is None else round(skew.total_seconds(), 3)
    return result


def check_clock(repo: Repository, margin: timedelta) -> timedelta | None:
    """This machine's clock minus the storage's, where the storage has a clock of its own;
    raises :class:`ClockSkew` when they disagree by more than ``margin``.

    The sweep compares lock times written by other machines with trash records written by
    this one, trusting that their clocks agree within ``margin``; a machine that agrees
    with the storage is checked against the one clock every client shares. A reading is
    only good to a second or so (HTTP ``Date`` has one-second resolution), so
    :data:`CLOCK_READING_ERROR` is allowed on top of the margin.
    """
    theirs = storage_time(repo.storage)
    if theirs is None:
        return None
    skew = repo.clock.now() - theirs
    if abs(skew) > margin + CLOCK_READING_ERROR:
        ahead = "ahead of" if skew > timedelta(0) else "behind"
        raise ClockSkew(
            f"this machine's clock is {abs(skew.total_seconds()):.0f} s {ahead} the "
            f"storage's ({repo.storage.describe()}), more than the {margin.total_seconds():.0f} s "
            "prune allows between clocks; it stopped before changing anything",
            hint="set the clock right (NTP) on this machine; or, if every machine that uses "
            "the repository agrees with this one, give a larger --lock-skew margin",
        )
    return skew


def _dry_run(repo: Repository, opts: PruneOptions, progress: ProgressSink) -> PruneResult:
    earlier = sweep(repo, own_lock=None, lock_skew=opts.lock_skew, dry_run=True)
    mark, _used, _known = _mark(repo, opts, progress, dry_run=True)
    swept = SweepResult()
    doomed = mark.packs_garbage + mark.packs_repacked
    doomed_bytes = mark.bytes_garbage + mark.bytes_repacked
    if doomed:
        # The record a real run writes now waits for every live lock (all are older).
        now = repo.clock.now()
        swept.waiting_for = sorted(
            info.describe()
            for info in lockmod.list_locks(repo.storage, repo.aead)
            if not lockmod.is_stale(info, now)
        )
        if swept.waiting_for:
            swept.records_waiting = 1
            swept.packs_waiting, swept.bytes_waiting = doomed, doomed_bytes
        else:
            swept.records_swept = 1
            swept.packs_deleted, swept.bytes_freed = doomed, doomed_bytes
    return PruneResult(
        True,
        earlier,
        mark,
        swept,
        earlier.packs_waiting + swept.packs_waiting,
        earlier.bytes_waiting + swept.bytes_waiting,
    )


@dataclass(frozen=True)
class _UsedCache:
    """Blob usage computed for a set of snapshots; valid for any subset of them, since
    snapshots never change (a forgotten snapshot only makes the cache conservative)."""

    snapshot_ids: frozenset[str]
    used: dict[bytes, set[bytes]]


def _mark(
    repo: Repository, opts: PruneOptions, progress: ProgressSink, *, dry_run: bool = False
) -> tuple[MarkResult, _UsedCache, dict[bytes, PackRecord]]:
    result = MarkResult()
    pending = list_trash(repo)
    pending_index = {name for rec in pending for name in rec.index}
    # Snapshots first, then the index: every listed snapshot's blobs are in an index file
    # written before it (write order packs -> index -> snapshot).
    snaps = _list_snapshots(repo)
    live, loaded = _load_live_index(repo, skip=pending_index)
    sizes = repo.list_packs()
    pending_ids = {p for rec in pending for p in rec.packs}
    trashed = [p for p in pending_ids if p not in live.packs and p in sizes]
    pending_headers = _read_headers(repo, trashed, sizes, _load_records(repo, pending_index))
    # Snapshots saved by backups that ran during an earlier prune may need blobs that now
    # live only in trashed packs; the view includes those so the walk finds them.
    used = _used_blobs(repo, _view(live, pending_headers.values()), snaps, progress)
    foreign = _foreign_needed(live, used)
    result.snapshots = len(snaps)
    result.packs = len(live.packs)
    result.bytes = sum(rec.size for rec in live.packs.values())
    result.packs_unindexed = sum(1 for p in sizes if p not in live.packs and p not in pending_ids)

    garbage: list[PackRecord] = []
    repack: list[PackRecord] = []
    for rec in live.packs.values():
        chain_used = used.get(rec.chain_id, set())
        total = sum(e.length for e in rec.entries)
        in_use = sum(
            e.length for e in rec.entries if e.blob_id in chain_used or e.blob_id in foreign
        )
        if in_use == 0:
            garbage.append(rec)
        elif (total - in_use) * 100 > opts.max_unused * total:
            repack.append(rec)
    result.packs_garbage = len(garbage)
    result.bytes_garbage = sum(rec.size for rec in garbage)
    result.packs_repacked = len(repack)
    result.bytes_repacked = sum(rec.size for rec in repack)
    cache = _UsedCache(frozenset(s.id for s in snaps), used)
    known = {rec.pack_id: rec for rec in (*garbage, *repack)}
    known.update(pending_headers)
    if not garbage and not repack:
        return result, cache, known

    doomed = {rec.pack_id for rec in (*garbage, *repack)}
    new_packs = _repack(
        repo, live, doomed, repack, used, foreign, result, progress, dry_run=dry_run
    )
    if dry_run:
        return result, cache, known
    # (2) The doomed packs keep an index of their own until the sweep, so that a snapshot
    # a running backup saves after deduplicating against them is complete when listed;
    # the record tells writers to keep off them from now on.
    doomed_records = [*garbage, *repack]
    trash_index = [repo.write_index(chunk) for chunk in _chunks(doomed_records)]
    first = write_trash(repo, sorted(doomed), trash_index)
    survivors = [rec for rec in live.packs.values() if rec.pack_id not in doomed]
    survivors.extend(new_packs)
    written = {repo.write_index(chunk) for chunk in _chunks(survivors)}  # (3)
    for name in loaded:  # (4): only what we loaded; a concurrent backup's index stays
        if name in written or name in trash_index:  # same content, same name: ours now
            continue
        try:
            repo.storage.delete(name)
            result.index_files_deleted += 1
        except ObjectNotFound:
            pass
        except ObjectRetained:
            # Under retention it stays, a duplicate listing of packs that are live or in
            # the trash (where it keeps them: see the sweep); a later prune deletes it.
            result.index_files_retained += 1
    result.index_files_written = len(written)
    # T: the old index is gone. Restamp the record so its time is at least T.
    final = write_trash(repo, sorted(doomed), trash_index)
    if final.name != first.name:
        with contextlib.suppress(ObjectNotFound, ObjectRetained):
            repo.storage.delete(first.name)
    result.trash_record = final.name
    index = Index()
    for rec in survivors:
        index.add_pack(rec)
    repo.index = index
    return result, cache, known


def _repack(
    repo: Repository,
    live: Index,
    doomed: set[bytes],
    repack: list[PackRecord],
    used: dict[bytes, set[bytes]],
    foreign: set[bytes],
    result: MarkResult,
    progress: ProgressSink,
    *,
    dry_run: bool,
) -> list[PackRecord]:
    """Copy the used blobs of ``repack`` into new packs of the same chains (step 1)."""
    if not repack:
        return []
    progress.start("repack", len(repack), sum(rec.size for rec in repack))
    try:
        return _copy_used(repo, live, doomed, repack, used, foreign, result, progress, dry_run)
    finally:
        progress.finish()


def _copy_used(
    repo: Repository,
    live: Index,
    doomed: set[bytes],
    repack: list[PackRecord],
    used: dict[bytes, set[bytes]],
    foreign: set[bytes],
    result: MarkResult,
    progress: ProgressSink,
    dry_run: bool,
) -> list[PackRecord]:
    kept: dict[bytes, set[bytes]] = {}
    for rec in live.packs.values():
        if rec.pack_id not in doomed:
            kept.setdefault(rec.chain_id, set()).update(e.blob_id for e in rec.entries)
    writer = SealedPackWriter(repo)
    for rec in sorted(repack, key=lambda r: (r.chain_id, r.pack_id)):
        chain_used = used.get(rec.chain_id, set())
        chain_kept = kept.setdefault(rec.chain_id, set())
        wanted = [
            e
            for e in rec.entries
            if (e.blob_id in chain_used or e.blob_id in foreign) and e.blob_id not in chain_kept
        ]
        if not wanted:
            progress.advance(1, rec.size)
            continue
        name = pack_name(rec.pack_id)
        raw = b"" if dry_run else repo.storage.get(name)
        for e in wanted:
            if e.blob_id in chain_kept:  # twice in this pack
                continue
            chain_kept.add(e.blob_id)
            result.blobs_repacked += 1
            result.bytes_copied += e.length
            if dry_run:
                continue
            sealed = raw[e.offset : e.offset + e.length]
            # Verify before copying: a damaged blob must not be given a new, clean home.
            repo.open_blob(e.blob_id, sealed, e.raw_length, name)
            writer.add(rec.chain_id, e, sealed)
        progress.advance(1, rec.size)
    records = writer.finish()
    result.packs_written = len(records)
    result.bytes_written = sum(rec.size for rec in records)
    return records


def _chunks(records: list[PackRecord]) -> Iterator[list[PackRecord]]:
    chunk: list[PackRecord] = []
    blobs = 0
    for rec in records:
        if chunk and blobs + len(rec.entries) > INDEX_FILE_MAX_BLOBS:
            yield chunk
            chunk, blobs = [], 0
        chunk.append(rec)
        blobs += len(rec.entries)
    if chunk:
        yield chunk


# --- sweep -------------------------------------------------------------------------------


def sweep(
    repo: Repository,
    *,
    own_lock: str | None = None,
    lock_skew: timedelta = DEFAULT_LOCK_SKEW,
    dry_run: bool = False,
    progress: ProgressSink | None = None,
    _used: _UsedCache | None = None,
    _known: dict[bytes, PackRecord] | None = None,
) -> SweepResult:
    """Delete the packs of every trash record whose sweep-after time has passed for all
    locks but ``own_lock``, rescuing the packs a snapshot still needs. The caller holds a
    ``prune`` lock (named ``own_lock``) unless this is a dry run."""
    result = SweepResult()
    records = list_trash(repo)
    if not records:
        return result
    ready, waiting = _ready_records(repo, records, own_lock, lock_skew, result, dry_run=dry_run)
    if not ready:
        _count_waiting(result, waiting, set(), repo.list_packs())
        return result
    snaps = _list_snapshots(repo)
    # The records' own index files are not "live": a pack they list is live only if
    # another index file lists it too (a backup adopted it, or an earlier sweep rescued it).
    live, _loaded = _load_live_index(repo, skip={n for rec in records for n in rec.index})
    sizes = repo.list_packs()
    candidates = list(dict.fromkeys(p for rec in ready for p in rec.packs))
    known = _load_records(repo, {n for rec in records for n in rec.index})
    known.update(_known or {})
    if _used is not None and {s.id for s in snaps} <= _used.snapshot_ids:
        headers = _read_headers(
            repo, [p for p in candidates if p not in live.packs and p in sizes], sizes, known
        )
        used = _used.used
    else:
        trashed = {p for rec in records for p in rec.packs if p not in live.packs and p in sizes}
        headers = _read_headers(repo, trashed, sizes, known)
        used = _used_blobs(repo, _view(live, headers.values()), snaps, progress)
    needed: set[bytes] = set()
    for blobs in used.values():
        needed |= blobs
    rescued: list[PackRecord] = []
    doomed: list[bytes] = []
    for pack_id in candidates:
        if pack_id in live.packs:
            result.packs_readopted += 1
        elif pack_id not in sizes:
            result.packs_gone += 1
        elif pack_id in headers and _still_needed(headers[pack_id], live, used, needed):
            rescued.append(headers[pack_id])
        else:
            # Also a pack whose header cannot be read: the walk found every used blob in
            # the view without it, so it holds nothing a snapshot needs.
            doomed.append(pack_id)
    result.packs_rescued = len(rescued)
    result.packs_deleted = len(doomed)
    result.bytes_freed = sum(sizes[p] for p in doomed)
    result.records_swept = len(ready)
    _count_waiting(result, waiting, set(doomed), sizes)
    if dry_run:
        return result
    if rescued:
        repo.write_index(rescued)  # before anything is deleted
    # The records' index files go before their packs, so that no index ever lists a
    # deleted pack; a record whose index file the storage keeps (retention) keeps its
    # packs too, until a later sweep.
    held_back = _delete_trash_index(repo, ready)
    if held_back:
        doomed = [p for p in doomed if p not in held_back]
        result.packs_deleted = len(doomed)
        result.bytes_freed = sum(sizes[p] for p in doomed)
    progress = progress or NoProgress()
    progress.start("delete", len(doomed), result.bytes_freed)
    retained: set[bytes] = set(held_back)
    try:
        for pack_id in doomed:
            try:
                repo.storage.delete(pack_name(pack_id))
            except ObjectNotFound:
                pass
            except ObjectRetained:
                # Under retention: it stays in the trash, and a later prune, once the
                # period is over, deletes it. Nothing a snapshot needs is in it.
                retained.add(pack_id)
            progress.advance(1, sizes[pack_id])
    finally:
        progress.finish()
    if retained:
        kept = retained - held_back
        result.packs_retained = len(retained)
        result.bytes_retained = sum(sizes[p] for p in retained if p in sizes)
        result.packs_deleted -= len(kept)
        result.bytes_freed -= sum(sizes[p] for p in kept)
    for record in ready:  # after the packs: a record outlives an interrupted sweep
        if retained.intersection(record.packs):
            continue  # keeps naming its retained packs for the next prune
        with contextlib.suppress(ObjectNotFound):
            repo.storage.delete(record.name)
    for rec in rescued:
        live.add_pack(rec)
    repo.index = live
    return result


def _delete_trash_index(repo: Repository, ready: list[TrashRecord]) -> set[bytes]:
    """Delete the index files of ``ready`` records; returns the packs of records one of
    whose index files the storage refused to delete (retention): they must stay."""
    held_back: set[bytes] = set()
    for record in ready:
        for name in record.index:
            try:
                repo.storage.delete(name)
            except ObjectNotFound:
                pass
            except ObjectRetained:
                held_back.update(record.packs)
    return held_back


def _ready_records(
    repo: Repository,
    records: list[TrashRecord],
    own_lock: str | None,
    lock_skew: timedelta,
    result: SweepResult,
    *,
    dry_run: bool,
) -> tuple[list[TrashRecord], list[TrashRecord]]:
    """Splits records into those that may be swept now and those that must wait."""
    now = repo.clock.now()
    others: list[lockmod.LockInfo] = []
    unreadable: list[str] = []
    for info in lockmod.list_locks(repo.storage, repo.aead, damaged=unreadable, warn=repo.warn):
        if info.name == own_lock:
            continue
        if lockmod.is_stale(info, now):
            if not dry_run:
                with contextlib.suppress(ObjectNotFound):
                    repo.storage.delete(info.name)
            result.stale_locks_removed += 1
            continue
        others.append(info)
    ready, waiting = [], []
    waiting_for: dict[str, str] = {}
    # A lock that cannot be read may be a live process's, damaged: it holds back every
    # record until its holder rewrites it or 'safehold unlock' removes it.
    waiting_for.update(
        (name, f"{name}, which cannot be read ('safehold unlock' removes it)")
        for name in unreadable
    )
    for rec in records:
        sweep_after = rec.created + lock_skew
        blockers = [info for info in others if info.created < sweep_after]
        if blockers or unreadable:
            waiting.append(rec)
            waiting_for.update((info.name, info.describe()) for info in blockers)
        else:
            ready.append(rec)
    result.records_waiting = len(waiting)
    result.waiting_for = sorted(waiting_for.values())
    return ready, waiting


def _count_waiting(
    result: SweepResult, waiting: list[TrashRecord], deleted: set[bytes], sizes: dict[bytes, int]
) -> None:
    packs = {p for rec in waiting for p in rec.packs if p in sizes and p not in deleted}
    result.packs_waiting = len(packs)
    result.bytes_waiting = sum(sizes[p] for p in packs)


def _still_needed(
    rec: PackRecord, live: Index, used: dict[bytes, set[bytes]], needed: set[bytes]
) -> bool:
    chain_used = used.get(rec.chain_id, set())
    for e in rec.entries:
        b = e.blob_id
        if b in chain_used and not live.has_in_chain(b, rec.chain_id):
            return True
        if b in needed and b not in live:
            return True
    return False


# --- before a forget -----------------------------------------------------------------------


def rescue_for_forget(repo: Repository, snaps: list[Snapshot]) -> int:
    """Before ``snaps`` are forgotten, give the trashed packs they need an index file of
    their own (rescue them); returns how many packs were rescued. The caller holds a lock.

    A snapshot saved while a prune ran may need packs of that prune's trash record until a
    sweep rescues them. A reader that took its lock after the record was written, and then
    found such a snapshot, does not hold back that record's sweep; were the snapshot
    forgotten meanwhile, the sweep would delete data the reader is reading. Rescued here,
    the packs are live again, and a later prune that finds them unused trashes them under
    a record younger than every such reader's lock. Only trash records whose packs are in
    no other index file cost anything: usually there are none.
    """
    records = list_trash(repo)
    if not records or not snaps:
        return 0
    own_index = {n for rec in records for n in rec.index}
    sizes = repo.list_packs()
    try:
        live, _loaded = _load_live_index(repo, skip=own_index)
    except IntegrityError:
        live = None  # cannot tell what is live: keep every trashed pack, to be safe
    trashed = [
        p
        for rec in records
        for p in rec.packs
        if p in sizes and (live is None or p not in live.packs)
    ]
    if not trashed:
        return 0
    headers = _read_headers(repo, trashed, sizes, _load_records(repo, own_index))
    wanted = list(headers.values())
    if live is not None:
        try:
            used = _walk_snapshots(repo, _view(live, wanted), snaps, NoProgress())
        except IntegrityError:
            pass  # a damaged or incomplete snapshot: keep every trashed pack, to be safe
        else:
            needed = {b for blobs in used.values() for b in blobs}
            wanted = [rec for rec in wanted if _still_needed(rec, live, used, needed)]
    if wanted:
        repo.write_index(wanted)
    return len(wanted)


# --- temporary files -------------------------------------------------------------------


class _TempFileCleaner(Protocol):
    def remove_stale_temp_files(self, older_than_seconds: float) -> int: ...


def _temp_file_cleaner(storage: object) -> _TempFileCleaner | None:
    """The backend under the storage wrappers, if it leaves temporary files (local)."""
    for _depth in range(8):
        if hasattr(storage, "remove_stale_temp_files"):
            return storage
        storage = getattr(storage, "inner", None)
        if storage is None:
            break
    return None


def remove_stale_temp_files(
    repo: Repository, *, lock_skew: timedelta = DEFAULT_LOCK_SKEW, min_age: timedelta | None = None
) -> int:
    """Delete temporary files that interrupted writes left (local storage only); returns
    how many went. Never fails the caller: a leftover only wastes space.

    A writer in progress must keep its file. Every writer takes its lock before it writes,
    and a file's modification time is its last write, so a file last written before the
    oldest live lock was created (less ``lock_skew`` for hosts whose clocks disagree)
    belongs to no live process; ``min_age`` (one hour) also guards writers that take no
    lock (``init``, key files), which write one small object and finish.
    """
    cleaner = _temp_file_cleaner(repo.storage)
    if cleaner is None:
        return 0
    now = repo.clock.now()
    age = min_age if min_age is not None else TEMP_FILE_MIN_AGE
    try:
        for info in lockmod.list_locks(repo.storage, repo.aead):
            if not lockmod.is_stale(info, now):
                age = max(age, now - info.created + lock_skew)
        return cleaner.remove_stale_temp_files(age.total_seconds())
    except SafeholdError:
        return 0


# --- shared helpers ------------------------------------------------------------------------


def _list_snapshots(repo: Repository) -> list[Snapshot]:
    """Every snapshot; prune does not go on past one it cannot read, since it would not
    know which data that snapshot needs."""
    damaged: list[str] = []
    snaps = repo.list_snapshots(damaged=damaged)
    if damaged:
        names = ", ".join(f"snapshots/{sid}" for sid in sorted(damaged))
        raise IntegrityError(
            f"prune cannot read {names}, so it cannot tell which data that snapshot needs; "
            "it stopped before deleting anything",
            hint="put back an intact copy of it, or give it up with 'safehold forget ID' "
            "(it cannot be restored anyway), then prune again",
        )
    return snaps


def _load_records(repo: Repository, names: Iterable[str]) -> dict[bytes, PackRecord]:
    """The pack records of the given index files (trash index files); files that are
    gone or damaged add nothing (callers read the pack headers instead)."""
    out: dict[bytes, PackRecord] = {}
    for name in sorted(names):
        try:
            records = decode_index(repo.load_object(name, T_INDEX), name)
        except (ObjectNotFound, IntegrityError):
            continue
        out.update((rec.pack_id, rec) for rec in records)
    return out


def _load_live_index(repo: Repository, *, skip: set[str] | None = None) -> tuple[Index, list[str]]:
    """Load every index file but ``skip`` (trash records' own); returns the index and the
    names of the files it came from (prune deletes exactly these). Damaged files raise:
    prune does not guess."""
    index = Index()
    loaded = []
    for name in repo.list_index_files():
        if skip and name in skip:
            continue
        try:
            records = decode_index(repo.load_object(name, T_INDEX), name)
        except ObjectNotFound:
            continue
        except IntegrityError as exc:
            raise IntegrityError(
                f"{exc.message}; prune does not know which packs it listed, so it stopped "
                "before deleting anything",
                hint="run 'safehold repair index', then prune again",
            ) from exc
        for rec in records:
            index.add_pack(rec)
        loaded.append(name)
    repo.index = index
    repo.index_loaded = True
    return index, loaded


def _view(live: Index, extra: Iterable[PackRecord]) -> Index:
    """The live index plus trashed packs, for reading trees that only trashed packs hold."""
    view = live.copy()  # shares the sorted run: no copy of the bulk
    for rec in extra:
        view.add_pack(rec)
    return view


def _read_headers(
    repo: Repository,
    pack_ids: Iterable[bytes],
    sizes: dict[bytes, int],
    known: dict[bytes, PackRecord] | None,
) -> dict[bytes, PackRecord]:
    """Pack headers by id; packs whose header cannot be read are left out."""
    out: dict[bytes, PackRecord] = {}
    todo = []
    for p in pack_ids:
        if known and p in known:
            out[p] = known[p]
        else:
            todo.append(p)

    def read(pack_id: bytes) -> PackRecord | None:
        try:
            return repo.read_pack_header(pack_id, sizes[pack_id])
        except (SafeholdError, ValueError):
            return None

    with ThreadPoolExecutor(HEADER_THREADS, thread_name_prefix="pack-header") as pool:
        for rec in pool.map(read, todo):
            if rec is not None:
                out[rec.pack_id] = rec
    return out


def _used_blobs(
    repo: Repository, view: Index, snaps: list[Snapshot], progress: ProgressSink | None = None
) -> dict[bytes, set[bytes]]:
    """Blob ids used by the snapshots of each chain: every tree reachable from their roots
    and every data blob those trees name. Raises if a snapshot needs a blob no pack holds."""
    progress = progress or NoProgress()
    progress.start("mark", len(snaps))
    try:
        return _walk_snapshots(repo, view, snaps, progress)
    finally:
        progress.finish()


def _walk_snapshots(
    repo: Repository, view: Index, snaps: list[Snapshot], progress: ProgressSink
) -> dict[bytes, set[bytes]]:
    used: dict[bytes, set[bytes]] = {}
    walked: dict[bytes, set[str]] = {}
    for snap in snaps:
        chain = bytes.fromhex(snap.chain)
        chain_used = used.setdefault(chain, set())
        chain_walked = walked.setdefault(chain, set())
        stack = [snap.tree]
        while stack:
            tree_id = stack.pop()
            if tree_id in chain_walked:
                continue
            chain_walked.add(tree_id)
            blob_id = bytes.fromhex(tree_id)
            chain_used.add(blob_id)
            # Names are not checked: a hostile tree's blobs are kept like any other's
            # (check and restore refuse its names; prune only needs the ids it holds).
            raw = _read_blob(repo, view, blob_id, snap)
            nodes = t.decode_tree(raw, f"tree {tree_id[:8]}", check=False)
            for node in nodes:
                if node.subtree:
                    stack.append(node.subtree)
                for hex_id in node.content:
                    data_id = bytes.fromhex(hex_id)
                    if data_id not in view:
                        raise _missing(data_id, snap)
                    chain_used.add(data_id)
        progress.advance(1)
    return used


def _foreign_needed(live: Index, used: dict[bytes, set[bytes]]) -> set[bytes]:
    """Blobs a chain uses but holds no copy of: they count as used wherever they are."""
    return {b for chain, blobs in used.items() for b in blobs if not live.has_in_chain(b, chain)}


def _read_blob(repo: Repository, view: Index, blob_id: bytes, snap: Snapshot) -> bytes:
    loc = view.lookup(blob_id)
    if loc is None:
        raise _missing(blob_id, snap)
    name = pack_name(loc.pack_id)
    sealed = repo.storage.get(name, loc.offset, loc.length)
    return repo.open_blob(blob_id, sealed, loc.raw_length, name)


def _missing(blob_id: bytes, snap: Snapshot) -> IntegrityError:
    return IntegrityError(
        f"snapshot {snap.short_id} needs blob {blob_id.hex()[:8]}, which no pack holds; "
        "prune stopped without deleting anything",
        hint="run 'safehold check' to see what is lost, then 'safehold repair index' (it "
        "finds copies an index lost); if that does not help, forget that snapshot",
    )
