"""``/api/v1/backup-jobs`` and ``/api/v1/restore-jobs``: the OSB backup manager's names
for runs of those kinds, with its calls: create, list, get, cancel. A job is a run: its id
is the run's, and ``/api/v1/runs/{id}`` shows it too; under a job's name, a run of the
other kind is not found.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import text

from safehold.api.auth import Operator, Reader
from safehold.api.cursor import CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT
from safehold.api.routes.plans import run_plan
from safehold.api.routes.restore_points import queue_restore
from safehold.api.routes.runs import cancel_run, get_run, list_runs
from safehold.api.schemas import (
    PRINTABLE,
    BackupJobCreate,
    ErrorBody,
    RestoreJobCreate,
    RunDetail,
    RunPage,
    RunQueued,
    RunStateName,
)
from safehold.api.state import api_state
from safehold.errors import NotFound

__all__ = ["router"]

router = APIRouter(
    tags=["jobs"],
    responses={status: {"model": ErrorBody} for status in (401, 403, 404)},
)

JobKind = Literal["backup", "restore"]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=200, pattern=CURSOR_PATTERN)]


def _of_kind(request: Request, project: str, run_id: uuid.UUID, kind: JobKind) -> None:
    """404 unless ``run_id`` is a run of ``kind`` in ``project``."""
    with api_state(request).engine.connect() as db:
        found = db.execute(
            text(
                "SELECT 1 FROM runs r JOIN plans p ON p.id = r.plan_id "
                "WHERE r.id = :r AND p.project = :project AND r.kind = :kind"
            ),
            {"r": run_id, "project": project, "kind": kind},
        ).scalar_one_or_none()
    if found is None:
        raise NotFound(f"no {kind} job {run_id}", hint=f"list them with GET /api/v1/{kind}-jobs")


@router.post("/backup-jobs", name="create_backup_job", status_code=202)
async def create_backup_job(request: Request, who: Operator, body: BackupJobCreate) -> RunQueued:
    """Queue a backup job of a plan now (``POST /plans/{name}/run``: a manual run)."""
    return await run_plan(request, who, body.plan)


@router.get("/backup-jobs", name="list_backup_jobs")
def list_backup_jobs(
    request: Request,
    who: Reader,
    plan: Annotated[str | None, Query(max_length=200, pattern=PRINTABLE)] = None,
    state: RunStateName | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> RunPage:
    """The project's backup jobs: its runs of kind backup, newest first."""
    return list_runs(request, who, plan, state, "backup", limit, cursor)


@router.post("/restore-jobs", name="create_restore_job", status_code=202,
             responses={409: {"model": ErrorBody}})  # fmt: skip
async def create_restore_job(request: Request, who: Operator, body: RestoreJobCreate) -> RunQueued:
    """Queue a restore job (the OSB backup manager's call): a point, and where to."""
    return await queue_restore(api_state(request), who.project, body.restore_point, body)


@router.get("/restore-jobs", name="list_restore_jobs")
def list_restore_jobs(
    request: Request,
    who: Reader,
    state: RunStateName | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> RunPage:
    """The project's restore jobs: its runs of kind restore, newest first."""
    return list_runs(request, who, None, state, "restore", limit, cursor)


@router.get("/backup-jobs/{job_id}", name="get_backup_job")
def get_backup_job(request: Request, who: Reader, job_id: uuid.UUID) -> RunDetail:
    """One backup job with its phases (hooks, their output) and log lines."""
    _of_kind(request, who.project, job_id, "backup")
    return get_run(request, who, job_id)


@router.get("/restore-jobs/{job_id}", name="get_restore_job")
def get_restore_job(request: Request, who: Reader, job_id: uuid.UUID) -> RunDetail:
    """One restore job with its phases (hooks, their output) and log lines."""
    _of_kind(request, who.project, job_id, "restore")
    return get_run(request, who, job_id)


@router.post("/backup-jobs/{job_id}/cancel", name="cancel_backup_job",
             responses={409: {"model": ErrorBody}})  # fmt: skip
async def cancel_backup_job(request: Request, who: Operator, job_id: uuid.UUID) -> RunDetail:
    """Cancel a queued or running backup job, as ``POST /runs/{id}/cancel``."""
    _of_kind(request, who.project, job_id, "backup")
    return await cancel_run(request, who, job_id)


@router.post("/restore-jobs/{job_id}/cancel", name="cancel_restore_job",
             responses={409: {"model": ErrorBody}})  # fmt: skip
async def cancel_restore_job(request: Request, who: Operator, job_id: uuid.UUID) -> RunDetail:
    """Cancel a queued or running restore job, as ``POST /runs/{id}/cancel``."""
    _of_kind(request, who.project, job_id, "restore")
    return await cancel_run(request, who, job_id)
