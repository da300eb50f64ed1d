"""``/api/v1/runs``: the runs of the token's project's plans, one run with its phases and
log lines, and cancelling a queued run.

Cancelling a run is one ``UPDATE`` to ``cancelled`` from ``queued`` or ``running``:

- **queued**: the same row a worker's claim moves from ``queued`` to ``running``, so
  exactly one of the two wins; the procrastinate job is then cancelled (a job taken
  meanwhile finds its run not queued and does nothing).
- **running**: procrastinate is asked to abort the job. The worker running it cancels the
  job's task, which stops the child as Ctrl-C would (its unlock and cleanup hooks run)
  and then kills it; the worker's own record of the end changes nothing, since it only
  ends a run that is still ``running``, and a cancelled run is not retried. A run that
  ends by itself in the moment between the two keeps ``cancelled`` in the catalog (its
  snapshot, if it made one, is in the repository: ``safehold catalog resync`` finds it).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import text

from safehold.api.auth import Operator, Reader
from safehold.api.cursor import (
    CURSOR_PATTERN,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    decode_cursor,
    encode_cursor,
    foreign_cursor,
)
from safehold.api.schemas import (
    PRINTABLE,
    ErrorBody,
    RunDetail,
    RunKindName,
    RunLineOut,
    RunOut,
    RunPage,
    RunStateName,
)
from safehold.api.state import api_state
from safehold.errors import Conflict, NotFound

__all__ = ["router"]

router = APIRouter(
    prefix="/runs",
    tags=["runs"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)

_COLUMNS = (
    "r.id, p.name AS plan, r.kind, r.trigger, r.attempt, r.state, r.worker, r.queued_at, "
    "r.started_at, r.ended_at, r.snapshot_id, r.bytes_read, r.bytes_added, r.error, r.hint, "
    "s.slot_at, s.reason"
)
_FROM = "FROM runs r JOIN plans p ON p.id = r.plan_id LEFT JOIN slots s ON s.id = r.slot_id"


def _fields(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["id"] = str(out["id"])
    started, ended = out["started_at"], out["ended_at"]
    out["duration_s"] = round((ended - started).total_seconds(), 3) if started and ended else None
    return out


@router.get("", name="list_runs")
def list_runs(
    request: Request,
    who: Reader,
    plan: Annotated[
        str | None, Query(max_length=200, pattern=PRINTABLE, description="a plan's name")
    ] = None,
    state: RunStateName | None = None,
    kind: RunKindName | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200, pattern=CURSOR_PATTERN)] = None,
) -> RunPage:
    """The project's runs, newest first, optionally of one plan, in one state or of one
    kind; pass ``next_cursor`` back as ``cursor`` for the next page."""
    params: dict[str, Any] = {"project": who.project, "limit": limit + 1, "plan": plan,
                              "state": state, "kind": kind, "at": None, "id": None}  # fmt: skip
    if cursor is not None:
        at, key = decode_cursor(cursor)
        try:
            params.update(at=at, id=uuid.UUID(key))
        except ValueError:
            raise foreign_cursor() from None
    query = text(
        f"SELECT {_COLUMNS} {_FROM} WHERE p.project = :project "
        "AND (CAST(:plan AS text) IS NULL OR p.name = :plan) "
        "AND (CAST(:state AS text) IS NULL OR r.state = :state) "
        "AND (CAST(:kind AS text) IS NULL OR r.kind = :kind) "
        "AND (CAST(:at AS timestamptz) IS NULL OR (r.queued_at, r.id) < (:at, CAST(:id AS uuid))) "
        "ORDER BY r.queued_at DESC, r.id DESC LIMIT :limit"
    )
    with api_state(request).engine.connect() as db:
        rows = db.execute(query, params).all()
    items = [RunOut(**_fields(row)) for row in rows[:limit]]
    last = items[-1] if len(rows) > limit else None
    return RunPage(
        items=items, next_cursor=None if last is None else encode_cursor(last.queued_at, last.id)
    )


@router.get("/{run_id}", name="get_run")
def get_run(request: Request, who: Reader, run_id: uuid.UUID) -> RunDetail:
    """One run with its phases (hooks, their output) and its log lines."""
    with api_state(request).engine.connect() as db:
        row = db.execute(
            text(f"SELECT {_COLUMNS}, r.phases {_FROM} WHERE r.id = :r AND p.project = :project"),
            {"r": run_id, "project": who.project},
        ).one_or_none()
        if row is None:
            raise NotFound(f"no run {run_id}", hint="list them with GET /api/v1/runs")
        lines = db.execute(
            text("SELECT at, level, message FROM run_lines WHERE run_id = :r ORDER BY seq"),
            {"r": run_id},
        ).all()
    return RunDetail(
        **_fields(row), lines=[RunLineOut(at=a, level=lv, message=m) for a, lv, m in lines]
    )


@router.post("/{run_id}/cancel", name="cancel_run", responses={409: {"model": ErrorBody}})
async def cancel_run(request: Request, who: Operator, run_id: uuid.UUID) -> RunDetail:
    """Cancel a queued or running run: a queued one will not run, a running one is
    stopped (its unlock and cleanup hooks run). Its slot, if any, is recorded as failed,
    ``cancelled``. An ended run answers 409."""
    state = api_state(request)
    job_id, was = await asyncio.to_thread(_cancel, request, who.project, run_id)
    if job_id is not None and state.jobs is not None:
        # queued: a job not taken yet is cancelled; one taken meanwhile finds its run
        # cancelled at its claim. running: the worker holding the job aborts it.
        await state.jobs.app.job_manager.cancel_job_by_id_async(job_id, abort=was == "running")
    return get_run(request, who, run_id)


def _cancel(request: Request, project: str, run_id: uuid.UUID) -> tuple[int | None, str]:
    with api_state(request).engine.begin() as db:
        # The row locked first, to return the state it had before the UPDATE.
        row = db.execute(
            text(
                "WITH before AS (SELECT r.id, r.state FROM runs r JOIN plans p "
                "ON p.id = r.plan_id WHERE r.id = :r AND p.project = :project "
                "AND r.state IN ('queued', 'running') FOR UPDATE OF r) "
                "UPDATE runs r SET state = 'cancelled', ended_at = now(), "
                "error = 'cancelled through the API' FROM before WHERE r.id = before.id "
                "RETURNING r.job_id, r.slot_id, before.state"
            ),
            {"r": run_id, "project": project},
        ).one_or_none()
        if row is not None:
            if row[1] is not None:
                db.execute(
                    text(
                        "UPDATE slots SET state = 'failed', reason = 'cancelled', "
                        "ended_at = now() WHERE id = :s AND run_id = :r"
                    ),
                    {"s": row[1], "r": run_id},
                )
            return (int(row[0]) if row[0] is not None else None), row[2]
        found = db.execute(
            text(
                "SELECT r.state FROM runs r JOIN plans p ON p.id = r.plan_id "
                "WHERE r.id = :r AND p.project = :project"
            ),
            {"r": run_id, "project": project},
        ).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no run {run_id}", hint="list them with GET /api/v1/runs")
    raise Conflict(f"run {run_id} has ended ({found})", hint="nothing to cancel")
