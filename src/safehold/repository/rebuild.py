"""Rebuilding the index from the packs alone (``safehold repair index``).

Every pack carries a sealed header listing its blobs (:mod:`safehold.repository.pack`), so
the index is derived data: list the packs, read each header, write new index files, and
only *then* delete the old ones. A crash between the two steps leaves both old and new
index files, which is harmless (the index keeps one location per blob and chain); deleting
first would leave a window in which no index lists the data.

The caller holds an exclusive lock: with writers excluded, no pack can appear or vanish
while the listing is turned into an index, and no backup can write an index that the
deletion of "old" files would take away.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from safehold.errors import IntegrityError, ObjectNotFound, SafeholdError
from safehold.repository.check import ProgressSink
from safehold.repository.index import Index, PackRecord
from safehold.repository.repository import Repository, pack_name
from safehold.repository.trash import trashed_packs

__all__ = ["INDEX_BATCH", "RebuildReport", "rebuild_index"]

# Packs per index file: small enough that one damaged file loses little and a reader's
# memory peak stays low, large enough that there are few files to list and load.
INDEX_BATCH = 5000


@dataclass
class RebuildReport:
    packs: int = 0  # packs now indexed
    blobs: int = 0  # distinct blobs they hold
    written: list[str] = field(default_factory=list)  # new index files
    removed: list[str] = field(default_factory=list)  # old index files deleted
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (pack name, why): left out
    trash_skipped: int = 0  # packs left out because prune put them in the trash

    def to_json(self) -> dict[str, Any]:
        return {
            "packs": self.packs,
            "blobs": self.blobs,
            "index_files_written": self.written,
            "index_files_removed": self.removed,
            "damaged_packs": [{"pack": p, "error": why} for p, why in self.damaged],
            "trash_skipped": self.trash_skipped,
        }


def rebuild_index(
    repo: Repository,
    *,
    include_trash: bool = False,
    threads: int = 4,
    batch: int = INDEX_BATCH,
    progress: ProgressSink | None = None,
) -> RebuildReport:
    """Replace every index file with ones built from the pack headers.

    Packs named in trash records are left out unless ``include_trash`` (prune already took
    them out of the index and will delete them). Packs whose header cannot be read are
    reported in :attr:`RebuildReport.damaged` and left out. Afterwards ``repo.index`` is
    the new index.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    report = RebuildReport()
    # Listed before anything is written: exactly these files are replaced.
    old = repo.list_index_files()
    listed = repo.list_packs()
    skip = set() if include_trash else trashed_packs(repo)
    todo = sorted(p for p in listed if p not in skip)
    report.trash_skipped = len(listed) - len(todo)

    def read(pack_id: bytes) -> PackRecord | SafeholdError:
        try:
            return repo.read_pack_header(pack_id, listed[pack_id])
        except (IntegrityError, ObjectNotFound) as exc:
            return exc

    records: list[PackRecord] = []
    if progress is not None:
        progress.start("repair", len(todo))
    try:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="repair") as pool:
            for pack_id, got in zip(todo, pool.map(read, todo), strict=True):
                if isinstance(got, SafeholdError):
                    report.damaged.append((pack_name(pack_id), got.message))
                else:
                    records.append(got)
                if progress is not None:
                    progress.advance(1)
    finally:
        if progress is not None:
            progress.finish()

    index = Index()
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        report.written.append(repo.write_index(chunk))
        for rec in chunk:
            index.add_pack(rec)
    new = set(report.written)
    for name in old:
        if name in new:
            continue
        try:
            repo.storage.delete(name)
        except ObjectNotFound:
            pass
        report.removed.append(name)
    repo.index = index
    repo.index_loaded = True
    report.packs = len(records)
    report.blobs = index.blob_count()
    return report
