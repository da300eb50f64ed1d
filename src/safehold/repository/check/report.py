"""What a check finds and how it is reported: severities, problems, the report.

An *error* means data cannot be read as things stand (``safehold check`` exits 4); a
*warning* is something the next backup or ``safehold repair index`` tidies up; a *note* is
information (a stale lock that was removed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from safehold.errors import SafeholdError
from safehold.ids import NO_PACK, PackId
from safehold.repository import lock as lockmod
from safehold.repository.repository import Repository

__all__ = [
    "CLEAN",
    "ERROR",
    "MAX_PATHS",
    "NOTE",
    "SEVERITIES",
    "WARNING",
    "CheckReport",
    "Found",
    "Issue",
    "Problem",
    "stale_lock_notes",
    "why",
]

ERROR = "error"
WARNING = "warning"
NOTE = "note"
SEVERITIES = (ERROR, WARNING, NOTE)


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: the object it is about, what is wrong and what it means."""

    severity: str  # ERROR, WARNING or NOTE
    code: str  # stable, for scripts: "pack-missing", "index-damaged", ...
    subject: str  # the object as a person looks for it: "data/ab/ab12...", "snapshot 1a2b3c4d /x"
    message: str
    hint: str = ""  # what to do about it
    pack: str = ""  # hex id of the pack involved, if any
    snapshot: str = ""  # id of the snapshot involved, if any
    path: str = ""  # path inside that snapshot

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"

    def to_json(self) -> dict[str, str]:
        """The problem as ``check --json`` prints it (empty fields left out)."""
        return {k: v for k, v in asdict(self).items() if v}


@dataclass
class CheckReport:
    """What a check found and counted; ``problems`` decide its exit code (docs/format.md)."""

    problems: list[Problem] = field(default_factory=list)
    snapshots: int = 0
    trees: int = 0  # distinct trees loaded and decoded
    blobs: int = 0  # distinct data blobs referenced by those trees
    packs: int = 0  # packs stored
    index_files: int = 0
    read_data: str = ""  # "" (structure only), "all", or the subset, e.g. "1/7"
    packs_read: int = 0
    bytes_read: int = 0
    read_pack_ids: list[PackId] = field(default_factory=list)  # kept out of JSON: long

    def _of(self, severity: str) -> list[Problem]:
        return [p for p in self.problems if p.severity == severity]

    @property
    def errors(self) -> list[Problem]:
        """The problems of severity error: any of them fails the check."""
        return self._of(ERROR)

    @property
    def warnings(self) -> list[Problem]:
        """The problems of severity warning."""
        return self._of(WARNING)

    @property
    def notes(self) -> list[Problem]:
        """The problems of severity note (nothing wrong, worth knowing)."""
        return self._of(NOTE)

    @property
    def ok(self) -> bool:
        """Whether the check found no error."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """The report as ``check --json`` prints it."""
        return {
            "ok": self.ok,
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
            "notes": [p.to_json() for p in self.notes],
            "counts": {
                "snapshots": self.snapshots,
                "trees": self.trees,
                "blobs": self.blobs,
                "packs": self.packs,
                "index_files": self.index_files,
                "packs_read": self.packs_read,
                "bytes_read": self.bytes_read,
            },
            "read_data": self.read_data or None,
        }


# --- locks ---------------------------------------------------------------------------------


def stale_lock_notes(repo: Repository) -> list[Problem]:
    """Notes about stale locks, errors about locks that cannot be read. Call before taking
    a lock: taking one removes stale locks."""
    now = repo.clock.now()
    damaged: list[str] = []
    notes = [
        Problem(
            NOTE,
            "lock-stale",
            info.name,
            f"stale {info.describe()}: that process is gone or stopped refreshing its "
            "lock, so the lock was removed",
        )
        for info in lockmod.list_locks(repo.storage, repo.aead, damaged=damaged)
        if lockmod.is_stale(info, now)
    ]
    notes.extend(
        Problem(
            ERROR,
            "lock-damaged",
            name,
            "the lock cannot be read: it names no process, and it holds back prune's "
            "deletions until it is removed",
            hint="if no safehold process is running, remove it with 'safehold unlock'",
        )
        for name in damaged
    )
    return notes


def why(exc: Exception) -> str:
    """The message of an exception for a report: a safehold error's own, else its type and text."""
    return exc.message if isinstance(exc, SafeholdError) else f"{type(exc).__name__}: {exc}"


# --- findings below a tree ------------------------------------------------------------------

# Paths listed per snapshot; the rest are counted, so that one lost pack shared by a
# thousand files does not bury every other finding.
MAX_PATHS = 20


@dataclass(slots=True)
class Issue:
    """One problem below a tree, before it becomes a :class:`Problem` of a snapshot."""

    path: str  # relative to the tree it was found under; "" is that tree itself
    code: str
    message: str
    pack: PackId = NO_PACK


class Found:
    """Problems found below one tree: the first :data:`MAX_PATHS`, and how many in all."""

    __slots__ = ("items", "total")

    def __init__(self) -> None:
        self.items: list[Issue] = []
        self.total = 0

    def add(self, issue: Issue) -> None:
        """Count ``issue``; keep it if fewer than ``MAX_PATHS`` are kept."""
        self.total += 1
        if len(self.items) < MAX_PATHS:
            self.items.append(issue)

    def extend(self, other: Found, prefix: str) -> None:
        """Take in what was found below a sub-folder, its paths under ``prefix``."""
        room = MAX_PATHS - len(self.items)
        self.items.extend(
            Issue(prefix + i.path, i.code, i.message, i.pack) for i in other.items[:room]
        )
        self.total += other.total


CLEAN = Found()
