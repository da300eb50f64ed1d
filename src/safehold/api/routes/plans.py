"""``/api/v1/plans``: the plans of the token's project, their ledger, and run now, pause,
resume.

A plan is addressed by its name within the token's project. The plans are the service's
current ones (its configuration file's); those are read-only here: the API runs, pauses
and resumes them, the file changes them. A pause through the API is the catalog row's own
flag, as ``safehold plan pause`` is, and survives reloads.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
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
from safehold.api.schemas import ErrorBody, PlanOut, RunQueued, SlotOut, SlotPage
from safehold.api.state import ApiState, api_state
from safehold.catalog import RunKind, RunTrigger
from safehold.clock import utcnow
from safehold.errors import NotFound
from safehold.service.plans import PlanSpec
from safehold.service.queries import PlanStatus, plan_status

__all__ = ["router"]

router = APIRouter(
    prefix="/plans",
    tags=["plans"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)


def _specs(state: ApiState, project: str) -> dict[str, PlanSpec]:
    return {key: spec for key, spec in state.plans().items() if spec.project == project}


def _spec(state: ApiState, project: str, name: str) -> PlanSpec:
    spec = state.plans().get(f"{project}/{name}")
    if spec is None:
        raise NotFound(f"no plan {name!r}", hint="list them with GET /api/v1/plans")
    return spec


def _out(spec: PlanSpec, status: PlanStatus, now: datetime) -> PlanOut:
    return PlanOut(
        name=spec.name,
        project=spec.project,
        origin="api" if spec.origin == "api" else "file",
        kind=spec.kind.value,
        # An API plan's drill plan changes with its plan's block, never on its own.
        read_only=spec.origin != "api" or spec.kind is RunKind.DRILL,
        schedule=status.schedule,
        paused=status.paused,
        next_slot=status.next_slot,
        last_state=status.last_state,
        last_slot=status.last_slot,
        last_success=status.last_success,
        rpo_seconds=status.rpo_seconds(now),
        missed=status.missed,
        failed=status.failed,
    )


def _statuses(state: ApiState, specs: dict[str, PlanSpec]) -> list[PlanOut]:
    now = utcnow()
    return [_out(specs[s.key], s, now) for s in plan_status(state.engine, specs, now)]


@router.get("", name="list_plans")
def list_plans(request: Request, who: Reader) -> list[PlanOut]:
    """The project's plans, by name, with their next slot, last result and RPO."""
    state = api_state(request)
    return _statuses(state, _specs(state, who.project))


@router.get("/{name}", name="get_plan")
def get_plan(request: Request, who: Reader, name: str) -> PlanOut:
    """One plan."""
    state = api_state(request)
    spec = _spec(state, who.project, name)
    return _statuses(state, {spec.key: spec})[0]


@router.post("/{name}/run", name="run_plan", status_code=202)
async def run_plan(request: Request, who: Operator, name: str) -> RunQueued:
    """Queue a run of the plan now (a manual run: it fills no slot of the ledger)."""
    state = api_state(request)
    spec = _spec(state, who.project, name)
    assert state.jobs is not None, "the API was made without the service's queue"
    # Not Queue.submit: it waits up to ten minutes for a database that went away, which a
    # worker recording a run's end must do and a request must not (503 at once).
    run_id = await asyncio.to_thread(
        state.jobs.new_run, spec.key, trigger=RunTrigger.MANUAL, kind=spec.kind
    )
    await state.jobs.defer(run_id, spec.key)
    return RunQueued(plan=spec.name, run_id=str(run_id))


def _set_paused(state: ApiState, spec: PlanSpec, paused: bool) -> PlanOut:
    with state.engine.begin() as db:
        db.execute(
            text(
                "UPDATE plans SET paused = :paused, updated_at = now() "
                "WHERE project = :project AND name = :name"
            ),
            {"paused": paused, "project": spec.project, "name": spec.name},
        )
    return _statuses(state, {spec.key: spec})[0]


@router.post("/{name}/pause", name="pause_plan")
def pause_plan(request: Request, who: Operator, name: str) -> PlanOut:
    """Pause the plan: its slots are recorded as skipped (paused) until it is resumed."""
    state = api_state(request)
    return _set_paused(state, _spec(state, who.project, name), True)


@router.post("/{name}/resume", name="resume_plan")
def resume_plan(request: Request, who: Operator, name: str) -> PlanOut:
    """Resume the plan (it stays paused while its file says ``paused: true``)."""
    state = api_state(request)
    return _set_paused(state, _spec(state, who.project, name), False)


_SLOTS = text(
    """
    SELECT s.id, s.slot_at, s.state, s.reason, s.run_id, s.created_at, s.ended_at
    FROM slots s JOIN plans p ON p.id = s.plan_id
    WHERE p.project = :project AND p.name = :name
      AND (CAST(:at AS timestamptz) IS NULL OR (s.slot_at, s.id) < (:at, :id))
    ORDER BY s.slot_at DESC, s.id DESC LIMIT :limit
    """
)


@router.get("/{name}/slots", name="list_slots")
def list_slots(
    request: Request,
    who: Reader,
    name: str,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200, pattern=CURSOR_PATTERN)] = None,
) -> SlotPage:
    """The plan's ledger, newest slot first: each slot's state and reason, and its run."""
    state = api_state(request)
    spec = _spec(state, who.project, name)
    params: dict[str, Any] = {"project": spec.project, "name": spec.name, "limit": limit + 1,
                              "at": None, "id": 0}  # fmt: skip
    if cursor is not None:
        at, key = decode_cursor(cursor)
        if not (key.isascii() and key.isdigit()):
            raise foreign_cursor()
        params.update(at=at, id=int(key))
    with state.engine.connect() as db:
        rows = db.execute(_SLOTS, params).all()
    items = [
        SlotOut(id=r[0], slot_at=r[1], state=r[2], reason=r[3],
                run_id=None if r[4] is None else str(r[4]), created_at=r[5], ended_at=r[6])
        for r in rows[:limit]
    ]  # fmt: skip
    last = items[-1] if len(rows) > limit else None
    return SlotPage(
        items=items, next_cursor=None if last is None else encode_cursor(last.slot_at, str(last.id))
    )
