"""What a prune did (or, dry, would do): one result per phase and their sum."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MarkResult", "PruneResult", "SweepResult"]


@dataclass
class SweepResult:
    """What one sweep did: trash records finished or left waiting, packs deleted or rescued."""

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
    """What prune's mark phase found and moved to the trash."""

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
    """The whole of one prune: the sweep of older records, the mark, the sweep after it."""

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
        """Packs deleted by both sweeps."""
        return self.earlier.packs_deleted + self.swept.packs_deleted

    @property
    def bytes_freed(self) -> int:
        """Stored bytes freed by both sweeps."""
        return self.earlier.bytes_freed + self.swept.bytes_freed

    @property
    def packs_rescued(self) -> int:
        """Packs both sweeps rescued (kept: a snapshot still needs them)."""
        return self.earlier.packs_rescued + self.swept.packs_rescued

    def to_json(self) -> dict[str, Any]:
        """The result as ``prune --json`` prints it, the sweeps' totals included."""
        d = asdict(self)
        d["packs_deleted"] = self.packs_deleted
        d["bytes_freed"] = self.bytes_freed
        d["packs_rescued"] = self.packs_rescued
        return d
