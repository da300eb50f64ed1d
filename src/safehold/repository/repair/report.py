"""What ``repair index`` did and what it could not save (:mod:`.rebuild` fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BLOBS_DAMAGED",
    "HEADER_DAMAGED",
    "MISMATCH",
    "MISSING",
    "UNREADABLE",
    "PackFinding",
    "RepairReport",
]

# What was wrong with a pack (PackFinding.problem).
HEADER_DAMAGED = "header-damaged"  # indexed, header does not open: salvaged, left unindexed
MISSING = "missing"  # indexed, not stored: its entries dropped
MISMATCH = "index-mismatch"  # header opens, the index lists more there: those salvaged
BLOBS_DAMAGED = "blobs-damaged"  # --read-all-packs: blobs fail to open: salvaged, retired
UNREADABLE = "unreadable"  # in no index, header does not open, no entries known anywhere


@dataclass
class PackFinding:
    """One pack repair had to do something about."""

    pack: str  # data/xx/<id>
    problem: str  # HEADER_DAMAGED, MISSING, BLOBS_DAMAGED or UNREADABLE
    why: str
    blobs: int = 0  # blobs the index (or the pack's header) lists there
    salvaged: int = 0  # verified and copied into new packs
    elsewhere: int = 0  # not copied: an intact copy is indexed in another pack of the chain
    lost: list[str] = field(default_factory=list)  # ids (hex) of blobs no copy of was saved
    damaged: list[str] = field(default_factory=list)  # ids (hex) whose stored blob fails

    def to_json(self) -> dict[str, Any]:
        """The finding as ``repair index --json`` prints it."""
        return {
            "pack": self.pack,
            "problem": self.problem,
            "error": self.why,
            "blobs": self.blobs,
            "salvaged": self.salvaged,
            "elsewhere": self.elsewhere,
            "lost": self.lost,
            "damaged": self.damaged,
        }


@dataclass
class RepairReport:
    """What ``repair index`` did: index files kept, written and removed, and per pack what was
    lost, damaged or found elsewhere."""

    read_all_packs: bool = False
    packs: int = 0  # packs indexed afterwards (new packs included)
    blobs: int = 0  # distinct blobs they hold
    kept: list[str] = field(default_factory=list)  # index files left as they were
    written: list[str] = field(default_factory=list)  # new index files
    removed: list[str] = field(default_factory=list)  # old index files replaced and deleted
    retained: list[str] = field(default_factory=list)  # replaced, but kept by retention
    damaged_index: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    left_for_prune: list[str] = field(default_factory=list)  # index files a trash record names
    adopted: int = 0  # packs no index listed, indexed from their headers
    corrected: int = 0  # packs whose index entries disagreed with their header
    new_packs: list[str] = field(default_factory=list)  # packs written with salvaged blobs
    findings: list[PackFinding] = field(default_factory=list)
    trash_skipped: int = 0  # stored packs left alone because a trash record names them
    # Blobs found damaged in packs that stay indexed (a fast run verifies only the copies it
    # relies on instead of salvaging): (pack, blob id hex). --read-all-packs deals with them.
    suspect: list[tuple[str, str]] = field(default_factory=list)

    def of(self, problem: str) -> list[PackFinding]:
        """The findings of one kind of problem."""
        return [f for f in self.findings if f.problem == problem]

    @property
    def lost(self) -> int:
        """Blobs an index listed of which no intact copy is indexed any more."""
        return sum(len(f.lost) for f in self.findings)

    @property
    def unrecovered(self) -> list[PackFinding]:
        """Unreadable packs that may have held what a damaged index file listed. Without a
        damaged index file, a pack no index lists held nothing reachable (it is a leftover,
        e.g. of an earlier repair): then it is only reported."""
        return self.of(UNREADABLE) if self.damaged_index else []

    @property
    def ok(self) -> bool:
        """Everything that was reachable stayed reachable, and nothing an index listed was
        lost; ``repair index`` exits 4 otherwise."""
        return not self.lost and not self.unrecovered

    def to_json(self) -> dict[str, Any]:
        """The report as ``repair index --json`` prints it."""
        return {
            "ok": self.ok,
            "read_all_packs": self.read_all_packs,
            "packs": self.packs,
            "blobs": self.blobs,
            "lost_blobs": self.lost,
            "index_files_kept": len(self.kept),
            "index_files_written": self.written,
            "index_files_removed": self.removed,
            "index_files_retained": self.retained,
            "index_files_damaged": [{"name": n, "error": why} for n, why in self.damaged_index],
            "index_files_left_for_prune": self.left_for_prune,
            "packs_adopted": self.adopted,
            "packs_corrected": self.corrected,
            "packs_written": self.new_packs,
            "damaged_packs": [f.to_json() for f in self.findings],
            "suspect_blobs": [{"pack": p, "blob": b} for p, b in self.suspect],
            "trash_skipped": self.trash_skipped,
        }
