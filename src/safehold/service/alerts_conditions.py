"""The alert conditions: each reads the catalog and returns what is wrong right now.

A condition is a function ``(db, context) -> Iterable[Finding]`` listed in
:data:`CONDITIONS`. It reports the present state, not events: "the newest backup of
plan P failed", not "a backup failed at 03:00". The engine (:mod:`.alerts`) compares each
evaluation's findings with the open incidents: a new finding opens an incident (and tells
people once), one that stays keeps it open (telling nobody again), and an open incident
no condition reports any more is resolved (and people are told so). That is why each
condition clears by itself: a later success, a newer restore point, a fresh heartbeat.

**Adding a condition** (drills, verification...): write a function of that shape that
returns :class:`Finding` s with a ``kind`` of its own, append it to :data:`CONDITIONS`
(or pass ``conditions=`` to :func:`~safehold.service.alerts.evaluate`), and add a line
for the kind to :data:`KIND_TITLES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from safehold import units

__all__ = [
    "CONDITIONS",
    "KIND_TITLES",
    "Condition",
    "EvalContext",
    "Finding",
    "agent_lost",
    "copy_failed",
    "drill_failed",
    "missed_slot",
    "rpo_breach",
    "run_failed",
    "verify_damage",
]

KIND_TITLES = {
    "run_failed": "backup failed",
    "missed_slot": "scheduled backup missed",
    "rpo_breach": "RPO target breached",
    "copy_failed": "copy to a destination failed",
    "agent_lost": "agent lost",
    "drill_failed": "restore drill failed",
    "rto_over_target": "restore drill over its RTO target",
    "verify_damage": "verification found damage",
}


@dataclass(frozen=True)
class Finding:
    """One thing wrong now; (kind, project, plan, subject) is its incident's key."""

    kind: str
    project: str
    plan: str = ""  # the plan's name within its project ("" for an agent's heartbeat)
    subject: str = ""  # what within the plan: a destination, an agent
    run_id: str | None = None
    phase: str | None = None
    error: str | None = None
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The incident's identity (its ``open_key`` while open)."""
        return "\x1f".join((self.kind, self.project, self.plan, self.subject))


@dataclass(frozen=True)
class EvalContext:
    """What a condition may need beyond the catalog."""

    now: datetime
    # plan key (project/name) -> its rpo_target in seconds, for the plans that have one
    rpo_targets: Mapping[str, float] = field(default_factory=dict)
    agent_stale_after: float = 300.0


Condition = Callable[[Connection, EvalContext], Iterable[Finding]]


def _failed_phase(phases: list[dict[str, Any]] | None, default: str) -> str:
    """The first hook phase that failed, else ``default`` (the run's own work)."""
    for phase in phases or []:
        if (
            phase.get("timed_out")
            or phase.get("interrupted")
            or phase.get("exit_code")
            not in (
                0,
                None,
            )
        ):
            return str(phase.get("phase") or default)
    return default


# The newest (by queueing) ended run of each plan's own kind (a retention or restore run does not
# decide whether the plan is healthy). A failed attempt whose retry is still queued or
# running is not reported yet: the retry may well succeed.
_NEWEST_RUNS = text(
    """
    SELECT p.project, p.name, r.id, r.kind, r.state, r.error, r.hint, r.phases, r.worker,
           r.ended_at,
           EXISTS (SELECT 1 FROM runs n WHERE n.plan_id = p.id AND n.trigger = 'retry'
                   AND n.state IN ('queued', 'running') AND n.queued_at > r.queued_at)
             AS retrying
    FROM plans p JOIN LATERAL (
      -- one probe of the (plan_id, queued_at) index a plan, however many runs it has
      SELECT * FROM runs r WHERE r.plan_id = p.id AND r.kind IN ('backup', 'prune')
        AND r.state IN ('succeeded', 'failed', 'timed_out', 'worker_lost')
        AND r.ended_at IS NOT NULL
      ORDER BY r.queued_at DESC LIMIT 1
    ) r ON TRUE
    """
)


def run_failed(db: Connection, ctx: EvalContext) -> Iterable[Finding]:
    """A plan's newest run failed or timed out (cleared by a later success)."""
    for row in db.execute(_NEWEST_RUNS):
        if row.state not in ("failed", "timed_out") or row.retrying:
            continue
        timed_out = row.state == "timed_out"
        yield Finding(
            "run_failed",
            row.project,
            row.name,
            run_id=str(row.id),
            phase=_failed_phase(row.phases, row.kind),
            error=row.error or ("the run timed out" if timed_out else "the run failed"),
            hint=row.hint
            or (
                f"see the run's log: safehold runs show {str(row.id)[:8]} --config FILE"
                + ("; raise the plan's timeout: if the run needs longer" if timed_out else "")
            ),
            details={"state": row.state, "ended_at": row.ended_at},
        )


_AGENT_RUN = re.compile(r"agent:(?P<project>[^/]+)/(?P<name>.+)")


def agent_lost(db: Connection, ctx: EvalContext) -> Iterable[Finding]:
    """An agent stopped heart-beating: its row is stale, or a plan's newest run ended
    "agent lost" (cleared by a fresh heartbeat, or by the plan's next success)."""
    stale = ctx.now - timedelta(seconds=ctx.agent_stale_after)
    rows = db.execute(
        text(
            "SELECT project, name, host, heartbeat_at FROM agents "
            "WHERE stopped_at IS NULL AND heartbeat_at < :stale"
        ),
        {"stale": stale},
    )
    for row in rows:
        yield Finding(
            "agent_lost",
            row.project,
            "",
            row.name,
            phase="heartbeat",
            error=f"agent {row.name} (on {row.host or 'an unknown host'}) last heart-beat at "
            f"{_utc(row.heartbeat_at):%Y-%m-%d %H:%M:%S} UTC",
            hint="start it again on its machine (safehold agent --server URL ...), or look "
            "at that machine and its network; its plans' jobs wait for it",
            details={"last_heartbeat": row.heartbeat_at},
        )
    for row in db.execute(_NEWEST_RUNS):
        if row.state != "worker_lost" or not (row.error or "").startswith("agent lost"):
            continue
        found = _AGENT_RUN.fullmatch(row.worker or "")
        yield Finding(
            "agent_lost",
            row.project,
            row.name,
            found.group("name") if found else (row.worker or ""),
            run_id=str(row.id),
            phase=row.kind,
            error=row.error,
            hint=row.hint or "start the agent again on its machine; the run is retried",
        )


def missed_slot(db: Connection, ctx: EvalContext) -> Iterable[Finding]:
    """A slot of the ledger was missed (nothing ran it within its window) and no later
    slot of its plan has succeeded."""
    rows = db.execute(
        text(
            """
            SELECT p.project, p.name, m.missed_at, m.missed, m.first_missed FROM plans p
            JOIN LATERAL (
              SELECT max(s.slot_at) AS missed_at, min(s.slot_at) AS first_missed,
                     count(*) AS missed
              FROM slots s WHERE s.plan_id = p.id AND s.state = 'missed'
                AND s.slot_at > coalesce((SELECT max(o.slot_at) FROM slots o
                                         WHERE o.plan_id = p.id AND o.state = 'succeeded'),
                                        '-infinity')
            ) m ON m.missed > 0
            """
        )
    )
    for row in rows:
        yield Finding(
            "missed_slot",
            row.project,
            row.name,
            phase="schedule",
            error=f"{row.missed} slot(s) missed since {_utc(row.first_missed):%Y-%m-%d %H:%M} UTC "
            f"(the newest at {_utc(row.missed_at):%Y-%m-%d %H:%M} UTC): nothing ran them within "
            "their start window",
            hint="check that a 'safehold serve' with a scheduler is running and that its "
            "workers (or the plan's agent) take jobs: safehold workers --config FILE",
            details={"newest_missed": row.missed_at, "missed": row.missed},
        )


def rpo_breach(db: Connection, ctx: EvalContext) -> Iterable[Finding]:
    """The newest restorable point of a plan with ``rpo_target`` is older than it (or
    there is none, and the plan has existed longer than that)."""
    if not ctx.rpo_targets:
        return
    keys = list(ctx.rpo_targets)
    rows = db.execute(
        text(
            """
            SELECT p.project, p.name, p.created_at,
              (SELECT max(rp.taken_at) FROM restore_points rp
                WHERE rp.plan_id = p.id AND rp.forgotten_at IS NULL) AS newest
            FROM plans p WHERE (p.project || '/' || p.name) = ANY(:keys)
            """
        ),
        {"keys": keys},
    )
    for row in rows:
        target = ctx.rpo_targets[f"{row.project}/{row.name}"]
        since = row.newest or row.created_at
        age = (ctx.now - since).total_seconds()
        if age <= target:
            continue
        newest = (
            f"the newest restore point is from {_utc(row.newest):%Y-%m-%d %H:%M} UTC"
            if row.newest
            else "the plan has no restore point yet"
        )
        yield Finding(
            "rpo_breach",
            row.project,
            row.name,
            phase="backup",
            error=f"{newest}: {units.duration(age)} old, over the RPO target of "
            f"{units.duration(target)}",
            hint="look at the plan's latest runs (safehold runs --plan "
            f"{row.project}/{row.name} --config FILE) and run one now: "
            f"safehold plan run {row.project}/{row.name} --config FILE",
            details={"newest": row.newest, "age_s": round(age), "rpo_target_s": target},
        )


# "copy to DEST failed: WHY" in a succeeded run's error (runs/source_run.py: _replicate
# records each failed destination so; the run is 'partial', recorded as succeeded).
_COPY_FAILED = re.compile(r"copy to (?P<dest>.+?) failed: (?P<why>.*?)(?=; copy to |$)", re.S)


def copy_failed(db: Connection, ctx: EvalContext) -> Iterable[Finding]:
    """The newest successful backup of a plan did not reach one of its further
    destinations (cleared by a later success that did)."""
    rows = db.execute(
        text(
            """
            SELECT p.project, p.name, r.id, r.error FROM plans p JOIN LATERAL (
              SELECT r.id, r.error FROM runs r WHERE r.plan_id = p.id AND r.kind = 'backup'
                AND r.state = 'succeeded' AND r.ended_at IS NOT NULL
              ORDER BY r.queued_at DESC LIMIT 1
            ) r ON TRUE
            """
        )
    )
    for row in rows:
        for found in _COPY_FAILED.finditer(row.error or ""):
            dest = found.group("dest")
            yield Finding(
                "copy_failed",
                row.project,
                row.name,
                dest,
                run_id=str(row.id),
                phase="copy",
                error=f"copy to {dest} failed: {found.group('why').strip()}",
                hint=f"the snapshot is safe in the repository but not at {dest}; check that "
                "destination (reachable, credentials, space) — the next backup copies again",
            )


def drill_failed(db: Connection, ctx: EvalContext) -> Iterable[Finding]:
    """A plan's newest finished drill failed, or took longer than its RTO target."""
    rows = db.execute(
        text(
            """
            SELECT DISTINCT ON (project, plan) project, plan, run_id, snapshot_id, result,
                   failed_phase, error, restore_seconds, rto_target_seconds
            FROM drills WHERE result IN ('passed', 'failed')
            ORDER BY project, plan, started_at DESC
            """
        )
    )
    for row in rows:
        run_id = None if row.run_id is None else str(row.run_id)
        if row.result == "failed":
            yield Finding(
                "drill_failed",
                row.project,
                row.plan,
                run_id=run_id,
                phase=row.failed_phase or "drill",
                error=row.error or "the drill failed",
                hint=f"the restore of snapshot {(row.snapshot_id or '?')[:8]} did not pass its "
                f"check: run it again with safehold drill --config FILE {row.plan} and read "
                "its output",
                details={"snapshot": row.snapshot_id},
            )
        elif (
            row.restore_seconds is not None
            and row.rto_target_seconds is not None
            and row.restore_seconds > row.rto_target_seconds
        ):
            yield Finding(
                "rto_over_target",
                row.project,
                row.plan,
                run_id=run_id,
                phase="restore",
                error=f"the restore took {units.duration(row.restore_seconds)}, over the "
                f"RTO target of {units.duration(row.rto_target_seconds)}",
                hint="restores of this plan are too slow for its target: look at the "
                "snapshot's size and the repository's speed, or raise rto_target",
                details={"restore_s": row.restore_seconds, "rto_target_s": row.rto_target_seconds},
            )


def verify_damage(db: Connection, ctx: EvalContext) -> Iterable[Finding]:
    """A plan's (or repository's) newest verification run failed: damage was found."""
    rows = db.execute(
        text(
            """
            SELECT p.project, p.name, r.id, r.state, r.error, r.hint, r.params
            FROM plans p JOIN LATERAL (
              SELECT r.id, r.state, r.error, r.hint, r.params FROM runs r
              WHERE r.plan_id = p.id AND r.kind = 'verify' AND r.ended_at IS NOT NULL
                AND r.state IN ('succeeded', 'failed')
              ORDER BY r.queued_at DESC LIMIT 1
            ) r ON TRUE
            """
        )
    )
    for row in rows:
        if row.state != "failed":
            continue
        params = row.params or {}
        snapshots = params.get("snapshots") or params.get("affected_snapshots") or []
        affected = ", ".join(str(s)[:8] for s in snapshots) or "see the run"
        yield Finding(
            "verify_damage",
            row.project,
            row.name,
            run_id=str(row.id),
            phase="verify",
            error=(row.error or "verification found damaged data")
            + f" (snapshots affected: {affected})",
            hint=row.hint
            or "run safehold check --read-data on the repository, then safehold repair; the "
            "next backup of the affected sources should be a full one",
            details={"snapshots": list(snapshots)},
        )


def _utc(value: datetime) -> datetime:
    """``value`` in UTC (the session's time zone may be another: messages say UTC)."""
    return value.astimezone(UTC)


# The conditions every evaluation runs, in this order (see the module on adding one).
CONDITIONS: list[Condition] = [
    run_failed,
    missed_slot,
    rpo_breach,
    copy_failed,
    agent_lost,
    drill_failed,
    verify_damage,
]
