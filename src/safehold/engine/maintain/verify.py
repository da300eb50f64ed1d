"""The verification use cases: ``check`` and ``repair index`` under the right locks.

``check`` takes a shared lock of kind ``check`` (backups may run meanwhile; their
unfinished packs show up as warnings); ``repair index`` takes an exclusive one, because it
deletes index files that a concurrent writer might just have relied on.
"""

from __future__ import annotations

from safehold.engine.progress import NO_PROGRESS, Progress
from safehold.repository.check import (
    CheckOptions,
    CheckReport,
    check_repository,
    stale_lock_notes,
)
from safehold.repository.repair import RepairOptions, RepairReport, repair_index
from safehold.repository.repository import Repository

__all__ = ["run_check", "run_repair_index"]


def run_check(
    repo: Repository, opts: CheckOptions | None = None, progress: Progress = NO_PROGRESS
) -> CheckReport:
    """Check the repository under a shared ``check`` lock; stale locks found before it was taken
    are reported too."""
    # Stale locks are noted before taking ours: taking a lock removes them.
    notes = stale_lock_notes(repo)
    with repo.lock("check"):
        report = check_repository(repo, opts, progress)
    report.problems.extend(notes)
    return report


def run_repair_index(
    repo: Repository, opts: RepairOptions | None = None, progress: Progress = NO_PROGRESS
) -> RepairReport:
    """Rebuild the index (``repair index``) under an exclusive lock."""
    with repo.lock("repair", exclusive=True):
        return repair_index(repo, opts, progress=progress)
