"""Several destinations: a snapshot written to the first is copied to the others.

Each extra destination is handled on its own: it is opened, receives the snapshot (a
verified ``copy`` into a repository, or a ``.tar.zst`` for an archive destination), and
its outcome is recorded. One that is unreachable or fails does not stop the others; the
caller reports every outcome and decides the run's exit code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from safehold.archive import ArchiveOptions, write_archive
from safehold.engine.maintain.copy import COPIED, FAILED, SKIPPED, copy_snapshots
from safehold.engine.progress import NO_PROGRESS, Progress
from safehold.errors import SafeholdError
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.base import Storage

__all__ = ["ArchiveDestination", "Destination", "Outcome", "RepositoryDestination", "replicate"]


@dataclass(frozen=True)
class RepositoryDestination:
    """A safehold repository; ``open`` may fail (unreachable, wrong password...)."""

    label: str  # a redacted location, safe to print
    open: Callable[[], Repository]


@dataclass(frozen=True)
class ArchiveDestination:
    """A plain-archive destination (safehold.archive)."""

    label: str
    open: Callable[[], Storage]
    options: ArchiveOptions


Destination = RepositoryDestination | ArchiveDestination


@dataclass
class Outcome:
    """What became of the new snapshot at one further destination."""

    destination: str
    status: str  # "copied", "skipped" (already there), "archived" or "failed"
    target: str = ""  # the copy's snapshot id or the archive's object name
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the destination has the snapshot (copied, already there, or archived)."""
        return self.status != FAILED

    def to_json(self) -> dict[str, str]:
        """The outcome as the run record stores it."""
        return {
            "destination": self.destination,
            "status": self.status,
            "target": self.target,
            "error": self.error,
        }


def _send(src: Repository, snap: Snapshot, dest: Destination, progress: Progress) -> Outcome:
    if isinstance(dest, ArchiveDestination):
        storage = dest.open()
        try:
            entry = write_archive(src, snap, storage, dest.options)
        finally:
            storage.close()
        return Outcome(dest.label, "archived", entry.name)
    dst = dest.open()
    try:
        (result,) = copy_snapshots(src, dst, [snap], progress)
    finally:
        dst.storage.close()
    if result.status in (COPIED, SKIPPED):
        return Outcome(dest.label, result.status, result.target)
    return Outcome(dest.label, FAILED, error="; ".join(result.problems) or "copy failed")


def replicate(
    src: Repository,
    snap: Snapshot,
    destinations: Sequence[Destination],
    progress: Progress = NO_PROGRESS,
) -> list[Outcome]:
    """Send ``snap`` to every destination; one outcome each, in order."""
    outcomes = []
    for dest in destinations:
        try:
            outcomes.append(_send(src, snap, dest, progress))
        except SafeholdError as exc:
            detail = exc.message + (f" ({exc.hint})" if exc.hint else "")
            outcomes.append(Outcome(dest.label, FAILED, error=detail))
        except OSError as exc:
            outcomes.append(Outcome(dest.label, FAILED, error=str(exc)))
    return outcomes
