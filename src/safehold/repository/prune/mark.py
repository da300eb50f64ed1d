"""Mark: find the packs no snapshot of their chain needs, or mostly does not, and put them in
the trash (steps 1-4 of the package docstring)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from safehold.errors import ObjectNotFound, ObjectRetained
from safehold.ids import PackId
from safehold.repository.index import Index, PackRecord
from safehold.repository.progress import ProgressSink
from safehold.repository.prune.options import PruneOptions
from safehold.repository.prune.repack import repack_packs
from safehold.repository.prune.results import MarkResult
from safehold.repository.prune.usage import (
    UsedCache,
    foreign_needed,
    index_view,
    list_snapshots,
    load_live_index,
    load_records,
    read_headers,
    used_blobs,
)
from safehold.repository.repository import Repository
from safehold.repository.trash import list_trash, write_trash

__all__ = ["INDEX_FILE_MAX_BLOBS", "mark_packs"]

# Index files written by prune hold at most this many blobs, so that none grows unbounded.
INDEX_FILE_MAX_BLOBS = 100_000


def mark_packs(
    repo: Repository, opts: PruneOptions, progress: ProgressSink, *, dry_run: bool = False
) -> tuple[MarkResult, UsedCache, dict[PackId, PackRecord]]:
    """Prune's first phase: find the packs no snapshot needs, repack the partly used ones and
    put both in the trash; returns the counts, the blobs in use and the records of the packs
    trashed. ``dry_run`` writes nothing."""
    result = MarkResult()
    pending = list_trash(repo)
    pending_index = {name for rec in pending for name in rec.index}
    # Snapshots first, then the index: every listed snapshot's blobs are in an index file
    # written before it (write order packs -> index -> snapshot).
    snaps = list_snapshots(repo)
    live, loaded = load_live_index(repo, skip=pending_index)
    sizes = repo.list_packs()
    pending_ids = {p for rec in pending for p in rec.packs}
    trashed = [p for p in pending_ids if p not in live.packs and p in sizes]
    pending_headers = read_headers(repo, trashed, sizes, load_records(repo, pending_index))
    # Snapshots saved by backups that ran during an earlier prune may need blobs that now
    # live only in trashed packs; the view includes those so the walk finds them.
    used = used_blobs(repo, index_view(live, pending_headers.values()), snaps, progress)
    foreign = foreign_needed(live, used)
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
    cache = UsedCache(frozenset(s.id for s in snaps), used)
    known = {rec.pack_id: rec for rec in (*garbage, *repack)}
    known.update(pending_headers)
    if not garbage and not repack:
        return result, cache, known

    doomed = {rec.pack_id for rec in (*garbage, *repack)}
    new_packs = repack_packs(
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
