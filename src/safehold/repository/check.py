"""Checking a repository: does every stored object hold what its name and the index say?

Two depths:

* **structure** (always): the config and the key files; every index file (its name is the
  BLAKE3 of its bytes); every pack an index names is stored with the recorded size (one
  listing, no stat per pack); every snapshot; every tree reachable from a snapshot; every
  blob a tree references is indexed *and* stored in a pack of the snapshot's own chain.
  That last rule is the chain invariant: a chain is self-contained, so forgetting every
  snapshot of one chain can never take data another chain needs.
* **data** (``read_data``, optionally a :class:`Subset`): download packs, compare their
  hash with their name, parse their header and compare it with the index, and open every
  blob (authenticate, decompress, re-hash against its id).

Each finding is a :class:`Problem`. An *error* means data cannot be read as things stand
(``safehold check`` exits 4); a *warning* is something the next backup or ``safehold repair
index`` tidies up; a *note* is information (a stale lock that was removed).

The order of work matters for concurrent writers, who save packs -> index -> snapshot:
snapshots are listed first, then the index is loaded, then packs are listed, so that every
listed snapshot's index and every indexed pack are already visible.

The parts live in their own modules: options (:mod:`.check_options`), findings and the
report (:mod:`.check_report`), the state a run shares (:mod:`.check_state`), and one class
per kind of check over that state, combined here: structure (:mod:`.check_structure`),
data (:mod:`.check_data`) and the snapshot walk (:mod:`.check_walk`).
"""

from __future__ import annotations

from safehold.repository.check_age import overdue_problems
from safehold.repository.check_data import DataChecks
from safehold.repository.check_options import CheckOptions, Subset, parse_subset
from safehold.repository.check_report import (
    ERROR,
    NOTE,
    SEVERITIES,
    WARNING,
    CheckReport,
    NoProgress,
    Problem,
    ProgressSink,
    stale_lock_notes,
)
from safehold.repository.check_structure import StructureChecks
from safehold.repository.check_walk import SnapshotChecks
from safehold.repository.repository import Repository

__all__ = [
    "ERROR",
    "NOTE",
    "WARNING",
    "CheckOptions",
    "CheckReport",
    "Problem",
    "ProgressSink",
    "Subset",
    "check_repository",
    "parse_subset",
    "stale_lock_notes",
]


def check_repository(
    repo: Repository, opts: CheckOptions | None = None, progress: ProgressSink | None = None
) -> CheckReport:
    """Check ``repo`` (the caller holds a lock). Never changes the repository.

    Damage is reported, never raised. A storage failure that outlasts the retries is
    raised: a check that could not read everything must not look like a clean one.
    """
    return _Checker(repo, opts or CheckOptions(), progress or NoProgress()).run()


class _Checker(StructureChecks, DataChecks, SnapshotChecks):
    """One check run; each base class holds one kind of check over the shared state."""

    def run(self) -> CheckReport:
        self.check_config_and_keys()
        snap_ids = sorted(self.repo.list_snapshot_ids())
        self.load_index()
        self.check_packs()
        if self.opts.read_data or self.opts.subset is not None:
            self.read_data()
        self.check_snapshots(snap_ids)
        if self.opts.max_age is not None:  # after the walk, which reports damaged snapshots
            self.report.problems.extend(
                overdue_problems(self.repo, snap_ids, self.opts.max_age, self.repo.clock.now())
            )
        self.unindexed_warnings()
        self.report.trees = len(self.tree_ids)
        self.report.blobs = len(self.blob_ids)
        order = {s: i for i, s in enumerate(SEVERITIES)}
        self.report.problems.sort(key=lambda p: order[p.severity])  # stable within a severity
        return self.report
