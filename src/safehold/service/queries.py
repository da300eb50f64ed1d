"""What the catalog says, for people: plans with their last result and RPO, runs, one run.

Everything here reads; the ledger and the run rows are written by the tick and the jobs.
The RPO of a plan is the age of its newest successful backup (what a restore now would
lose), counted from the ledger without any external dead-man switch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text

from safehold.service.plans import PlanSpec

__all__ = [
    "FINAL_STATES",
    "PlanStatus",
    "plan_status",
    "run_detail",
    "runs_list",
    "wait_for_run",
]


@dataclass(frozen=True)
class PlanStatus:
    """One line of ``safehold plans``."""

    key: str
    schedule: str
    paused: bool
    next_slot: datetime | None
    last_state: str | None
    last_slot: datetime | None
    last_success: datetime | None
    missed: int  # missed slots in the ledger
    failed: int  # failed or timed-out slots

    def rpo_seconds(self, now: datetime) -> float | None:
        """Age of the newest successful backup (None: never succeeded)."""
        if self.last_success is None:
            return None
        return (now - self.last_success).total_seconds()

    def to_json(self, now: datetime) -> dict[str, Any]:
        """The line as ``plans --json`` prints it (``rpo_seconds`` counted at ``now``)."""
        return {
            "plan": self.key,
            "schedule": self.schedule,
            "paused": self.paused,
            "next_slot": self.next_slot,
            "last_state": self.last_state,
            "last_slot": self.last_slot,
            "last_success": self.last_success,
            "rpo_seconds": self.rpo_seconds(now),
            "missed": self.missed,
            "failed": self.failed,
        }


_STATUS = text(
    """
    SELECT p.project, p.name, p.paused,
      (SELECT s.state FROM slots s WHERE s.plan_id = p.id ORDER BY s.slot_at DESC LIMIT 1),
      (SELECT max(s.slot_at) FROM slots s WHERE s.plan_id = p.id),
      (SELECT max(r.ended_at) FROM runs r WHERE r.plan_id = p.id
         AND r.kind IN ('backup', 'prune', 'verify') AND r.state = 'succeeded'),
      (SELECT count(*) FROM slots s WHERE s.plan_id = p.id AND s.state = 'missed'),
      (SELECT count(*) FROM slots s WHERE s.plan_id = p.id
         AND s.state IN ('failed', 'timed_out'))
    FROM plans p ORDER BY p.project, p.name
    """
)


def plan_status(engine: Engine, specs: Mapping[str, PlanSpec], now: datetime) -> list[PlanStatus]:
    """A line per plan of ``specs`` (the file's), with what the ledger says of it."""
    with engine.connect() as db:
        rows = db.execute(_STATUS).all()
    found = {f"{r[0]}/{r[1]}": r for r in rows}
    out = []
    for key, spec in sorted(specs.items()):
        row = found.get(key)
        paused = spec.paused or bool(row and row[2])
        out.append(
            PlanStatus(
                key=key,
                schedule=spec.schedule.describe(),
                paused=paused,
                next_slot=None if paused else spec.schedule.next_after(now),
                last_state=row[3] if row else None,
                last_slot=row[4] if row else None,
                last_success=row[5] if row else None,
                missed=row[6] if row else 0,
                failed=row[7] if row else 0,
            )
        )
    return out


_RUN_COLUMNS = (
    "r.id, p.project || '/' || p.name AS plan, r.kind, r.trigger, r.attempt, r.state, "
    "r.worker, r.queued_at, r.started_at, r.ended_at, r.snapshot_id, r.bytes_read, "
    "r.bytes_added, r.error, r.hint, s.slot_at, s.reason"
)


def _run_dict(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["id"] = str(out["id"])
    started, ended = out["started_at"], out["ended_at"]
    out["duration_s"] = round((ended - started).total_seconds(), 3) if started and ended else None
    return out


def runs_list(
    engine: Engine,
    *,
    plan: str | None = None,
    state: str | None = None,
    kind: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest runs first, optionally of one plan (``project/name``), in one state, or
    of one kind."""
    where: list[str] = ["TRUE"]
    params: dict[str, object] = {"limit": limit}
    if plan is not None:
        project, name = plan.split("/", 1) if "/" in plan else ("default", plan)
        where.append("p.project = :project AND p.name = :name")
        params.update(project=project, name=name)
    if state is not None:
        where.append("r.state = :state")
        params["state"] = state
    if kind is not None:
        where.append("r.kind = :kind")
        params["kind"] = kind
    query = text(
        f"SELECT {_RUN_COLUMNS} FROM runs r JOIN plans p ON p.id = r.plan_id "
        f"LEFT JOIN slots s ON s.id = r.slot_id WHERE {' AND '.join(where)} "
        "ORDER BY r.queued_at DESC LIMIT :limit"
    )
    with engine.connect() as db:
        return [_run_dict(row) for row in db.execute(query, params)]


FINAL_STATES = ("succeeded", "failed", "timed_out", "skipped", "worker_lost", "cancelled")


def wait_for_run(
    engine: Engine, run_id: uuid.UUID, *, poll: float = 0.5, timeout: float | None = None
) -> dict[str, Any]:
    """The run ``run_id`` once it has ended (polled every ``poll`` seconds); a
    :class:`TimeoutError` after ``timeout`` seconds, if given."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        found = run_detail(engine, str(run_id))
        if found is not None and found["state"] in FINAL_STATES:
            return found
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} has not ended after {timeout} s")
        time.sleep(poll)


def run_detail(engine: Engine, run_id: str) -> dict[str, Any] | None:
    """One run with its phases and log lines; ``run_id`` may be a unique prefix."""
    with engine.connect() as db:
        ids = db.execute(
            text("SELECT id FROM runs WHERE id::text LIKE :prefix LIMIT 2"),
            {"prefix": run_id.lower().replace("%", "").replace("_", "") + "%"},
        ).all()
        if len(ids) != 1:
            return None
        found: uuid.UUID = ids[0][0]
        row = db.execute(
            text(
                f"SELECT {_RUN_COLUMNS}, r.phases FROM runs r JOIN plans p ON p.id = r.plan_id "
                "LEFT JOIN slots s ON s.id = r.slot_id WHERE r.id = :r"
            ),
            {"r": found},
        ).one()
        lines = db.execute(
            text("SELECT at, level, message FROM run_lines WHERE run_id = :r ORDER BY seq"),
            {"r": found},
        ).all()
    out = _run_dict(row)
    out["lines"] = [{"at": at, "level": lvl, "message": msg} for at, lvl, msg in lines]
    return out
