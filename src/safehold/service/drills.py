"""Drills as the service sees them: their plans, which point each takes, their records.

A source whose ``drill:`` has a ``schedule`` gets a plan of its own, kind ``drill``, in
its project, named ``<source>.drill`` (its slots in the ledger beside the source's own,
its jobs under their own lock, so that a drill never waits for a backup of the source nor
holds one up; on the source's agent when it has one). A drill run's job runs ``safehold
drill --config FILE SOURCE --snapshot ID`` in a child process like every run; the
worker chooses the snapshot here beforehand (the plan's restore points, and for
``rotating`` the point its previous drill proved) and records the child's outcome in
``drills`` with the run.

The ``drills`` table names the *source's* plan (``project``, ``plan`` = the source's
name), so that a plan's drills are found by the plan people know.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text

from safehold.catalog import RunKind
from safehold.config import Config
from safehold.policy.schedule import parse_schedule
from safehold.runs.drill import Point, choose_point
from safehold.service.plans import PlanSpec

__all__ = [
    "DRILL_SUFFIX",
    "TREND_SIZE",
    "drill_plan_name",
    "drill_plans",
    "drill_source",
    "drills_list",
    "end_drill",
    "last_drilled",
    "pick_snapshot",
    "record_drill",
    "start_drill",
]

DRILL_SUFFIX = ".drill"
TREND_SIZE = 5  # restore times shown in a plan's trend


def drill_plan_name(source: str) -> str:
    """The name of the drill plan of source ``source``."""
    return f"{source}{DRILL_SUFFIX}"


def drill_source(spec: PlanSpec) -> str:
    """The source a drill plan drills."""
    return spec.name.removesuffix(DRILL_SUFFIX)


def drill_plans(config: Config, limits: tuple[tuple[str, int], ...] = ()) -> dict[str, PlanSpec]:
    """The file's drill plans: one per source whose ``drill:`` has a schedule."""
    out: dict[str, PlanSpec] = {}
    for name, source in config.sources.items():
        common = source.common
        drill = common.drill
        if drill is None or drill.schedule is None:
            continue
        key = f"{common.project}/{drill_plan_name(name)}"
        out[key] = PlanSpec(
            project=common.project,
            name=drill_plan_name(name),
            agent=common.agent,
            config_path=config.path,
            schedule=parse_schedule(drill.schedule, key=key, timezone=drill.timezone),
            paused=drill.paused,
            on_overlap="skip",  # a drill still going when the next is due is enough
            timeout=drill.timeout,
            repository=config.repository.location if config.repository else "",
            limits=limits,
            kind=RunKind.DRILL,
        )
    return out


def last_drilled(engine: Engine, project: str, plan: str) -> str | None:
    """The snapshot the plan's newest finished drill restored (None: none yet)."""
    with engine.connect() as db:
        return db.execute(
            text(
                "SELECT snapshot_id FROM drills WHERE project = :p AND plan = :n "
                "AND result <> 'running' AND snapshot_id IS NOT NULL "
                "ORDER BY started_at DESC, id DESC LIMIT 1"
            ),
            {"p": project, "n": plan},
        ).scalar_one_or_none()


def _points(engine: Engine, project: str, plan: str) -> list[Point]:
    with engine.connect() as db:
        rows = db.execute(
            text(
                "SELECT rp.snapshot_id, rp.taken_at, rp.chain_id, rp.isolated "
                "FROM restore_points rp JOIN plans p ON p.id = rp.plan_id "
                "WHERE p.project = :p AND p.name = :n AND rp.forgotten_at IS NULL"
            ),
            {"p": project, "n": plan},
        ).all()
    # An isolated point (or one without a known chain) is a chain of its own.
    return [
        Point(snap, taken_at, snap if isolated or not chain else chain)
        for snap, taken_at, chain, isolated in rows
    ]


def pick_snapshot(engine: Engine, project: str, plan: str, target: str) -> str | None:
    """The snapshot the next drill of the plan takes among its restorable points (None:
    the catalog knows none; the drill then takes the repository's newest)."""
    point = choose_point(
        _points(engine, project, plan), target, last_drilled(engine, project, plan)
    )
    return None if point is None else point.snapshot


_INSERT = text(
    """
    INSERT INTO drills (run_id, project, plan, snapshot_id, started_at, finished_at,
                        restore_seconds, rto_target_seconds, bytes, result, failed_phase,
                        check_output, error)
    VALUES (:run_id, :project, :plan, :snapshot, :started, :finished, :restore_seconds,
            :rto_target, :bytes, :result, :failed_phase, :check_output, :error)
    RETURNING id
    """
)


def _values(outcome: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "snapshot": outcome.get("snapshot"),
        "finished": outcome.get("finished"),
        "restore_seconds": outcome.get("restore_seconds"),
        "rto_target": outcome.get("rto_target_seconds"),
        "bytes": outcome.get("bytes"),
        "result": outcome.get("result") or "failed",
        "failed_phase": outcome.get("failed_phase"),
        "check_output": outcome.get("check_output") or None,
        "error": outcome.get("error"),
    }


def start_drill(
    engine: Engine,
    *,
    run_id: uuid.UUID | None,
    project: str,
    plan: str,
    snapshot: str | None,
    started: datetime,
    rto_target: float | None,
) -> int:
    """A ``running`` drills row; its id."""
    with engine.begin() as db:
        return int(
            db.execute(
                _INSERT,
                {
                    "run_id": run_id,
                    "project": project,
                    "plan": plan,
                    "started": started,
                    **_values({"snapshot": snapshot, "rto_target_seconds": rto_target}),
                    "result": "running",
                },
            ).scalar_one()
        )


def end_drill(engine: Engine, drill_id: int, outcome: Mapping[str, Any]) -> None:
    """Write a drill's end (``outcome``: :meth:`DrillOutcome.to_json`) into its row."""
    with engine.begin() as db:
        db.execute(
            text(
                "UPDATE drills SET snapshot_id = :snapshot, finished_at = :finished, "
                "restore_seconds = :restore_seconds, rto_target_seconds = :rto_target, "
                "bytes = :bytes, result = :result, failed_phase = :failed_phase, "
                "check_output = :check_output, error = :error WHERE id = :id"
            ),
            {"id": drill_id, **_values(outcome)},
        )


def record_drill(
    engine: Engine,
    *,
    run_id: uuid.UUID | None,
    project: str,
    plan: str,
    outcome: Mapping[str, Any],
    started: datetime,
) -> int:
    """A finished drill's row (the service's, from its child's outcome); its id."""
    with engine.begin() as db:
        return int(
            db.execute(
                _INSERT,
                {
                    "run_id": run_id,
                    "project": project,
                    "plan": plan,
                    "started": outcome.get("started") or started,
                    **_values(outcome),
                },
            ).scalar_one()
        )


def drills_list(
    engine: Engine, *, plan: str | None = None, project: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Drills newest first (``plan``: NAME or PROJECT/NAME), each with its plan's trend:
    the restore times of the plan's drills up to it (newest first) and whether this one
    was ``better`` or ``worse`` than the one before (``same`` within 5 %)."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": max(1, min(limit, 1000))}
    if plan:
        proj, _, name = plan.rpartition("/")
        where.append("d.plan = :plan")
        params["plan"] = name
        if proj:
            where.append("d.project = :project")
            params["project"] = proj
    if project:
        where.append("d.project = :only_project")
        params["only_project"] = project
    sql = (
        "SELECT d.id, d.run_id, d.project, d.plan, d.snapshot_id, d.started_at, d.finished_at, "
        "d.restore_seconds, d.rto_target_seconds, d.bytes, d.result, d.failed_phase, "
        "d.check_output, d.error, "
        "array_remove(array(SELECT e.restore_seconds FROM drills e WHERE e.project = d.project "
        "AND e.plan = d.plan AND e.started_at <= d.started_at AND e.id <> d.id "
        "AND e.restore_seconds IS NOT NULL ORDER BY e.started_at DESC, e.id DESC "
        f"LIMIT {TREND_SIZE - 1}), NULL) AS earlier "
        "FROM drills d"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY d.started_at DESC, d.id DESC LIMIT :limit"
    )
    with engine.connect() as db:
        rows = db.execute(text(sql), params).mappings().all()
    out = []
    for row in rows:
        item = dict(row)
        earlier = [float(x) for x in item.pop("earlier") or []]
        now = item["restore_seconds"]
        item["run_id"] = str(item["run_id"]) if item["run_id"] else None
        item["rtos"] = ([now] if now is not None else []) + earlier
        item["trend"] = _trend(now, earlier[0] if earlier else None)
        target = item["rto_target_seconds"]
        item["over_target"] = bool(target is not None and now is not None and now > target)
        out.append(item)
    return out


def _trend(now: float | None, before: float | None) -> str | None:
    if now is None or before is None:
        return None
    if abs(now - before) <= 0.05 * max(before, 1e-9):
        return "same"
    return "better" if now < before else "worse"
