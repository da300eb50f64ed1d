"""Repack: copy the used blobs of mostly unused packs, still sealed and verified first, into
new packs of the same chains (step 1 of the mark)."""

from __future__ import annotations

from safehold.ids import BlobId, ChainId, PackId
from safehold.repository.index import Index, PackRecord
from safehold.repository.progress import ProgressSink
from safehold.repository.prune.results import MarkResult
from safehold.repository.repository import Repository, pack_name
from safehold.repository.sealed_packs import SealedPackWriter

__all__ = ["repack_packs"]


def repack_packs(
    repo: Repository,
    live: Index,
    doomed: set[PackId],
    repack: list[PackRecord],
    used: dict[ChainId, set[BlobId]],
    foreign: set[BlobId],
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
    doomed: set[PackId],
    repack: list[PackRecord],
    used: dict[ChainId, set[BlobId]],
    foreign: set[BlobId],
    result: MarkResult,
    progress: ProgressSink,
    dry_run: bool,
) -> list[PackRecord]:
    kept: dict[ChainId, set[BlobId]] = {}
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
