"""Sweep: delete the packs of trash records that no live lock can still need, rescuing those
a snapshot needs (the package docstring says when a record is ready)."""

from __future__ import annotations

import contextlib
from datetime import timedelta

from safehold.errors import ObjectNotFound, ObjectRetained
from safehold.ids import BlobId, ChainId, PackId
from safehold.repository import lock as lockmod
from safehold.repository.index import Index, PackRecord
from safehold.repository.progress import NoProgress, ProgressSink
from safehold.repository.prune.options import DEFAULT_LOCK_SKEW
from safehold.repository.prune.results import SweepResult
from safehold.repository.prune.usage import (
    UsedCache,
    index_view,
    list_snapshots,
    load_live_index,
    load_records,
    read_headers,
    used_blobs,
)
from safehold.repository.repository import Repository, pack_name
from safehold.repository.trash import TrashRecord, list_trash

__all__ = ["still_needed", "sweep"]


# The sweep's steps in their order, in one function so that it reads against docs/format.md
# section 16 step by step (ruff's branch and statement caps waived).
def sweep(  # noqa: PLR0912, PLR0915
    repo: Repository,
    *,
    own_lock: str | None = None,
    lock_skew: timedelta = DEFAULT_LOCK_SKEW,
    dry_run: bool = False,
    progress: ProgressSink | None = None,
    _used: UsedCache | None = None,
    _known: dict[PackId, PackRecord] | None = None,
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
    snaps = list_snapshots(repo)
    # The records' own index files are not "live": a pack they list is live only if
    # another index file lists it too (a backup adopted it, or an earlier sweep rescued it).
    live, _loaded = load_live_index(repo, skip={n for rec in records for n in rec.index})
    sizes = repo.list_packs()
    candidates = list(dict.fromkeys(p for rec in ready for p in rec.packs))
    known = load_records(repo, {n for rec in records for n in rec.index})
    known.update(_known or {})
    if _used is not None and {s.id for s in snaps} <= _used.snapshot_ids:
        headers = read_headers(
            repo, [p for p in candidates if p not in live.packs and p in sizes], sizes, known
        )
        used = _used.used
    else:
        trashed = {p for rec in records for p in rec.packs if p not in live.packs and p in sizes}
        headers = read_headers(repo, trashed, sizes, known)
        used = used_blobs(repo, index_view(live, headers.values()), snaps, progress)
    needed: set[BlobId] = set()
    for blobs in used.values():
        needed |= blobs
    rescued: list[PackRecord] = []
    doomed: list[PackId] = []
    for pack_id in candidates:
        if pack_id in live.packs:
            result.packs_readopted += 1
        elif pack_id not in sizes:
            result.packs_gone += 1
        elif pack_id in headers and still_needed(headers[pack_id], live, used, needed):
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
    retained: set[PackId] = set(held_back)
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


def _delete_trash_index(repo: Repository, ready: list[TrashRecord]) -> set[PackId]:
    """Delete the index files of ``ready`` records; returns the packs of records one of
    whose index files the storage refused to delete (retention): they must stay."""
    held_back: set[PackId] = set()
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
    result: SweepResult, waiting: list[TrashRecord], deleted: set[PackId], sizes: dict[PackId, int]
) -> None:
    packs = {p for rec in waiting for p in rec.packs if p in sizes and p not in deleted}
    result.packs_waiting = len(packs)
    result.bytes_waiting = sum(sizes[p] for p in packs)


def still_needed(
    rec: PackRecord, live: Index, used: dict[ChainId, set[BlobId]], needed: set[BlobId]
) -> bool:
    """Whether a trashed pack still holds a blob that a chain uses and holds nowhere else, or a
    blob needed across chains that no live pack has: then it is rescued, not deleted."""
    chain_used = used.get(rec.chain_id, set())
    for e in rec.entries:
        b = e.blob_id
        if b in chain_used and not live.has_in_chain(b, rec.chain_id):
            return True
        if b in needed and b not in live:
            return True
    return False
