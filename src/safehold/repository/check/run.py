"""One check run: the structure, data and snapshot-walk checks combined over one state, in
the order the package docstring gives."""

from __future__ import annotations

from safehold.repository.check.age import overdue_problems
from safehold.repository.check.data import DataChecks
from safehold.repository.check.options import CheckOptions
from safehold.repository.check.report import SEVERITIES, CheckReport
from safehold.repository.check.structure import StructureChecks
from safehold.repository.check.walk import SnapshotChecks
from safehold.repository.progress import NoProgress, ProgressSink
from safehold.repository.repository import Repository

__all__ = ["check_repository"]


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
        self.report.blobs = self.blobs_met()
        order = {s: i for i, s in enumerate(SEVERITIES)}
        self.report.problems.sort(key=lambda p: order[p.severity])  # stable within a severity
        return self.report
