"""``safehold catalog resync``: what the catalog knows of snapshots, rebuilt from the
repository, which stays their source of truth.

For each of the file's backup plans, the repository's snapshots of that source (a
snapshot's ``source_name`` is the plan's name) are compared with the plan's runs:

- a snapshot no succeeded run names (made by hand with ``backup --config``, by a run
  whose end was never recorded, or before the catalog existed) gets a succeeded run of
  its own, trigger ``resync``, its times and bytes taken from the snapshot; the plan's
  last success and RPO then count it;
- a run naming a snapshot the repository no longer has (forgotten, or pruned away by
  retention) is reported, not changed: the run did happen, and its record stays.

Running it twice changes nothing the second time; two at once are serialized by an
advisory lock, so neither writes a snapshot's run twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text

from safehold.catalog import RunKind, RunState, RunTrigger
from safehold.service.plans import PlanSpec, sync_plans

__all__ = ["RESYNC_LOCK", "ResyncReport", "SnapshotSeen", "resync"]

# "resync" in ASCII: the advisory lock one resync holds while it writes.
RESYNC_LOCK = 0x726573796E63


@dataclass(frozen=True)
class SnapshotSeen:
    """What the catalog needs of one snapshot in the repository."""

    id: str
    source_name: str
    time: datetime
    summary: Mapping[str, Any] = field(default_factory=dict)
    chain_id: str | None = None
    chain_seq: int | None = None
    isolated: bool = False


@dataclass
class ResyncReport:
    """What a resync found and did."""

    plans: list[str] = field(default_factory=list)
    snapshots: int = 0  # the plans' snapshots in the repository
    known: int = 0  # of those, already named by a succeeded run
    added: list[dict[str, Any]] = field(default_factory=list)  # runs written for the others
    forgotten: list[dict[str, Any]] = field(default_factory=list)  # runs whose snapshot is gone

    def to_json(self) -> dict[str, Any]:
        """The report as ``catalog resync --json`` prints it."""
        return {
            "plans": self.plans,
            "snapshots": self.snapshots,
            "known": self.known,
            "added": self.added,
            "forgotten": self.forgotten,
        }


_RUNS = text(
    """
    SELECT r.id, p.project || '/' || p.name, r.snapshot_id, r.state, r.ended_at
    FROM runs r JOIN plans p ON p.id = r.plan_id
    WHERE r.plan_id = ANY(:ids) AND r.kind = 'backup' AND r.snapshot_id IS NOT NULL
    ORDER BY r.queued_at
    """
)
_ADD = text(
    """
    INSERT INTO runs (id, plan_id, kind, trigger, attempt, state, queued_at, started_at,
                      ended_at, snapshot_id, bytes_read, bytes_added)
    VALUES (:id, :plan, :kind, :trigger, 1, :state, :at, :at, :ended, :snap, :read, :added)
    """
)


def resync(
    engine: Engine, specs: Mapping[str, PlanSpec], snapshots: Iterable[SnapshotSeen]
) -> ResyncReport:
    """Make the catalog's runs of the backup plans ``specs`` agree with ``snapshots``, every
    snapshot of their repository (see the module)."""
    plans = {key: spec for key, spec in specs.items() if spec.kind is RunKind.BACKUP}
    report = ResyncReport(plans=sorted(plans))
    ids = sync_plans(engine, plans.values())  # a plan never served yet gets its row
    by_name = {spec.name: key for key, spec in plans.items()}
    everything = list(snapshots)
    present = {snap.id for snap in everything}
    with engine.begin() as db:
        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": RESYNC_LOCK})
        succeeded: set[str] = set()
        for run_id, plan, snap, state, ended in db.execute(_RUNS, {"ids": list(ids.values())}):
            if state == RunState.SUCCEEDED.value:
                succeeded.add(snap)
            if snap not in present:
                report.forgotten.append(
                    {"plan": plan, "run_id": str(run_id), "snapshot": snap, "ended_at": ended}
                )
        for snap in everything:
            plan = by_name.get(snap.source_name)
            if plan is None:
                continue
            report.snapshots += 1
            if snap.id in succeeded:
                report.known += 1
                continue
            run_id = uuid.uuid4()
            duration = snap.summary.get("duration_s")
            ended = snap.time + timedelta(seconds=float(duration)) if duration else snap.time
            db.execute(
                _ADD,
                {
                    "id": run_id,
                    "plan": ids[plan],
                    "kind": RunKind.BACKUP.value,
                    "trigger": RunTrigger.RESYNC.value,
                    "state": RunState.SUCCEEDED.value,
                    "at": snap.time,
                    "ended": ended,
                    "snap": snap.id,
                    "read": snap.summary.get("bytes_read"),
                    "added": snap.summary.get("data_added"),
                },
            )
            succeeded.add(snap.id)
            report.added.append(
                {"plan": plan, "run_id": str(run_id), "snapshot": snap.id, "time": snap.time}
            )
        _restore_points(db, ids, by_name, everything)
    return report


# A snapshot's point: made (with the run that names it) or completed with its chain; one
# statement for all of them, as arrays.
_POINTS = text(
    """
    INSERT INTO restore_points (plan_id, project, snapshot_id, run_id, taken_at, chain_id,
                                chain_seq, isolated, bytes_added)
    SELECT s.plan_id, (SELECT p.project FROM plans p WHERE p.id = s.plan_id), s.snap,
      (SELECT r.id FROM runs r WHERE r.plan_id = s.plan_id AND r.snapshot_id = s.snap
         AND r.state = 'succeeded' ORDER BY r.queued_at LIMIT 1),
      s.taken_at, s.chain_id, s.chain_seq, s.isolated, s.added
    FROM unnest(CAST(:plan AS bigint[]), CAST(:snap AS text[]), CAST(:at AS timestamptz[]),
                CAST(:chain AS text[]), CAST(:seq AS integer[]), CAST(:iso AS boolean[]),
                CAST(:added AS bigint[]))
         AS s(plan_id, snap, taken_at, chain_id, chain_seq, isolated, added)
    ON CONFLICT (plan_id, snapshot_id) DO UPDATE SET
      taken_at = excluded.taken_at, chain_id = excluded.chain_id,
      chain_seq = excluded.chain_seq, isolated = excluded.isolated, forgotten_at = NULL
    """
)


def _restore_points(
    db: Connection,
    ids: Mapping[str, int],
    by_name: Mapping[str, str],
    snapshots: list[SnapshotSeen],
) -> None:
    """Every snapshot of a plan is one of its restore points; a point whose snapshot is
    gone from the repository is forgotten."""
    mine = [(ids[by_name[s.source_name]], s) for s in snapshots if s.source_name in by_name]
    if mine:
        db.execute(
            _POINTS,
            {
                "plan": [plan_id for plan_id, _ in mine],
                "snap": [s.id for _, s in mine],
                "at": [s.time for _, s in mine],
                "chain": [s.chain_id for _, s in mine],
                "seq": [s.chain_seq for _, s in mine],
                "iso": [s.isolated for _, s in mine],
                "added": [s.summary.get("data_added") for _, s in mine],
            },
        )
    db.execute(
        text(
            "UPDATE restore_points SET forgotten_at = now() WHERE plan_id = ANY(:plans) "
            "AND forgotten_at IS NULL AND NOT snapshot_id = ANY(:present)"
        ),
        {"plans": list(ids.values()), "present": [s.id for s in snapshots]},
    )
