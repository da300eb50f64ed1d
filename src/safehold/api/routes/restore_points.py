"""``/api/v1/restore-points``: the project's restore points (chain-aware), their holds,
and restore jobs (``/api/v1/restore-jobs`` is :mod:`safehold.api.routes.jobs`).

A point is named by its number or by its snapshot id (a unique prefix of 4 digits or
more). A held point is kept by its plan's retention until released. A restore job is a run
of kind ``restore``: a worker (or the plan's agent) restores the point through the
source's restore path and hooks, into the source's own place or into a named target.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import text

from safehold.api.auth import Admin, Operator, Reader
from safehold.api.cursor import CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT
from safehold.api.schemas import (
    PRINTABLE,
    ErrorBody,
    HoldRequest,
    RestorePointOut,
    RestorePointPage,
    RestoreRequest,
    RunQueued,
)
from safehold.api.state import ApiState, api_state
from safehold.catalog import RunKind, RunTrigger
from safehold.errors import Conflict, NotFound, UsageError
from safehold.service.restore_points import (
    get_point,
    hold,
    list_points,
    release,
    restore_request,
)

__all__ = ["plan_points_router", "queue_restore", "router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
}  # fmt: skip
router = APIRouter(prefix="/restore-points", tags=["restore points"], responses=_ERRORS)
plan_points_router = APIRouter(prefix="/plans", tags=["restore points"], responses=_ERRORS)

Ref = Annotated[str, "a point's number or a snapshot id prefix"]


def _page(
    request: Request, project: str, plan: str | None, held: bool | None, forgotten: bool,
    limit: int, cursor: str | None,
) -> RestorePointPage:  # fmt: skip
    found = list_points(
        api_state(request).engine, projects=[project],
        plan=None if plan is None else f"{project}/{plan}", held=held,
        include_forgotten=forgotten, cursor=cursor, limit=limit,
    )  # fmt: skip
    return RestorePointPage(
        items=[RestorePointOut(**point) for point in found.points], next_cursor=found.next_cursor
    )


@router.get("", name="list_restore_points")
def list_restore_points(
    request: Request,
    who: Reader,
    plan: Annotated[str | None, Query(max_length=200, pattern=PRINTABLE)] = None,
    held: bool | None = None,
    include_forgotten: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200, pattern=CURSOR_PATTERN)] = None,
) -> RestorePointPage:
    """The project's restore points, newest first: of one plan, held or not, and with
    ``include_forgotten`` those the repository no longer has."""
    return _page(request, who.project, plan, held, include_forgotten, limit, cursor)


@plan_points_router.get("/{name}/restore-points", name="list_plan_restore_points")
def list_plan_restore_points(
    request: Request,
    who: Reader,
    name: str,
    held: bool | None = None,
    include_forgotten: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200, pattern=CURSOR_PATTERN)] = None,
) -> RestorePointPage:
    """One plan's restore points, newest first."""
    with api_state(request).engine.connect() as db:
        known = db.execute(
            text("SELECT 1 FROM plans WHERE project = :p AND name = :n"),
            {"p": who.project, "n": name},
        ).first()
    if known is None:
        raise NotFound(f"no plan {name!r}", hint="list them with GET /api/v1/plans")
    return _page(request, who.project, name, held, include_forgotten, limit, cursor)


@router.get("/{ref}", name="get_restore_point")
def get_restore_point(request: Request, who: Reader, ref: Ref) -> RestorePointOut:
    """One restore point, by its number or its snapshot id (a prefix). A point of another
    project is not found, as one that does not exist."""
    return RestorePointOut(**get_point(api_state(request).engine, ref, projects=[who.project]))


@router.post("/{ref}/hold", name="hold_restore_point")
def hold_restore_point(
    request: Request, who: Operator, ref: Ref, body: HoldRequest | None = None
) -> RestorePointOut:
    """Hold the point: its plan's retention keeps it until it is released."""
    found = hold(api_state(request).engine, ref, by=f"token:{who.token_id}",
                 reason=body.reason if body else None, projects=[who.project])  # fmt: skip
    return RestorePointOut(**found)


@router.post("/{ref}/release", name="release_restore_point")
def release_restore_point(request: Request, who: Operator, ref: Ref) -> RestorePointOut:
    """End the hold on the point."""
    return RestorePointOut(**release(api_state(request).engine, ref, projects=[who.project]))


async def queue_restore(state: ApiState, project: str, ref: str, body: RestoreRequest) -> RunQueued:
    """Queue a restore job of the point ``ref`` of ``project``, as ``body`` says."""
    """Queue a restore job of the point ``ref`` of ``project``, as ``body`` says."""
    key, snapshot = await asyncio.to_thread(restore_request, state.engine, ref, projects=[project])
    spec = state.plans().get(key)
    if spec is None:
        raise Conflict(
            f"the plan of restore point {ref} is not in the service's configuration",
            hint="restore it by hand: safehold restore SNAPSHOT --config FILE --source NAME",
        )
    assert state.jobs is not None, "the API was made without the service's queue"
    params: dict[str, Any] = {"snapshot": snapshot, "target": body.target,
                              "replace": body.replace}  # fmt: skip
    if body.paths:
        if not body.target:
            raise UsageError(
                "restoring some paths of a point needs a new target",
                hint="give target: a folder to restore them into",
            )
        params["paths"] = body.paths
    run_id = await asyncio.to_thread(
        state.jobs.new_run, key, trigger=RunTrigger.MANUAL, kind=RunKind.RESTORE, params=params
    )
    await state.jobs.defer(run_id, key)
    return RunQueued(plan=spec.name, run_id=str(run_id))


@router.delete("/{ref}", name="delete_restore_point", status_code=202,
               responses={409: {"model": ErrorBody}})  # fmt: skip
async def delete_restore_point(request: Request, who: Admin, ref: Ref) -> RunQueued:
    """Delete a restore point: a job of its plan forgets the snapshot in the repository (a
    later prune frees its data); a held point is refused (409) until released. Any point
    may go: the repository keeps every piece another snapshot names, so an incremental
    never loses its chain's full's data."""
    state = api_state(request)
    point = await asyncio.to_thread(get_point, state.engine, ref, projects=[who.project])
    if point["forgotten_at"] is not None:
        raise NotFound(f"restore point {ref} is gone already", hint="nothing to delete")
    if point["held"]:
        raise Conflict(
            f"restore point {ref} is held ({point['hold_reason'] or 'no reason given'})",
            hint=f"release it first: POST /api/v1/restore-points/{point['id']}/release",
        )
    key = f"{point['project']}/{point['plan']}"
    spec = state.plans().get(key)
    if spec is None:
        raise Conflict(
            f"the plan of restore point {ref} is not in the service's configuration",
            hint="forget it by hand: safehold forget --config FILE SNAPSHOT",
        )
    assert state.jobs is not None, "the API was made without the service's queue"
    run_id = await asyncio.to_thread(
        state.jobs.new_run, key, trigger=RunTrigger.MANUAL, kind=RunKind.RETENTION,
        params={"snapshots": [point["snapshot_id"]]},
    )  # fmt: skip
    await state.jobs.defer(run_id, key)
    return RunQueued(plan=spec.name, run_id=str(run_id))


@router.post("/{ref}/restore", name="restore_restore_point", status_code=202,
             responses={409: {"model": ErrorBody}})  # fmt: skip
async def restore_restore_point(
    request: Request, who: Operator, ref: Ref, body: RestoreRequest | None = None
) -> RunQueued:
    """Queue a restore job of the point (follow it as a run: GET /api/v1/runs/{id})."""
    return await queue_restore(api_state(request), who.project, ref, body or RestoreRequest())
