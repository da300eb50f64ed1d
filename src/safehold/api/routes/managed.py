"""staffeln's check: is this backup one safehold manages (so that a delete policy outside
safehold can refuse to delete it)?

- ``GET /api/v1/managed?backup_id=ID`` (a token; its project only): JSON.
- ``POST /v1/backup?backup_id=ID``, staffeln's own form, which a Cinder ``backup:delete``
  policy calls through oslo.policy's HTTP check. That check sends no token and reads the
  reply ``True`` as "allowed", so the answer is the text ``True`` when the backup is *not*
  safehold's (delete allowed) and ``False`` when it is. It needs no token, and looks in
  every project; it says yes or no only, for an exact id: a snapshot id is 64 hex digits
  and a run id a random UUID, neither of which can be guessed.

An id is a snapshot id that a run recorded (``runs.snapshot_id``) or a run id.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from safehold.api.auth import Reader
from safehold.api.schemas import ErrorBody, Managed
from safehold.api.state import api_state

__all__ = ["router", "staffeln_router"]

router = APIRouter(tags=["managed"], responses={401: {"model": ErrorBody}})
staffeln_router = APIRouter(tags=["managed"])

# Snapshot ids are hex, run ids UUIDs: nothing else can be one of safehold's.
BackupId = Annotated[str, Query(min_length=1, max_length=100, pattern=r"^[0-9A-Za-z._-]+$")]

# Each form finds its row by an index (runs' primary key, ix_runs_snapshot_id): the
# staffeln form answers without a token, so it must cost a lookup, never a scan.
_BY_SNAPSHOT = text(
    """
    SELECT r.id, p.name FROM runs r JOIN plans p ON p.id = r.plan_id
    WHERE r.snapshot_id = :b AND (CAST(:project AS text) IS NULL OR p.project = :project)
    ORDER BY r.queued_at DESC LIMIT 1
    """
)
_BY_RUN = text(
    """
    SELECT r.id, p.name FROM runs r JOIN plans p ON p.id = r.plan_id
    WHERE r.id = :run AND (CAST(:project AS text) IS NULL OR p.project = :project)
    """
)


def _find(request: Request, backup_id: str, project: str | None) -> Any:
    try:
        run_id: uuid.UUID | None = uuid.UUID(backup_id)
    except ValueError:
        run_id = None
    with api_state(request).engine.connect() as db:
        if run_id is not None:
            found = db.execute(_BY_RUN, {"run": run_id, "project": project}).one_or_none()
            if found is not None:
                return found
        return db.execute(_BY_SNAPSHOT, {"b": backup_id, "project": project}).one_or_none()


@router.get("/managed", name="managed")
def managed(request: Request, who: Reader, backup_id: BackupId) -> Managed:
    """Whether ``backup_id`` (a snapshot id or a run id) is a backup of this project's."""
    row = _find(request, backup_id, who.project)
    if row is None:
        return Managed(backup_id=backup_id, managed=False)
    return Managed(backup_id=backup_id, managed=True, run_id=str(row[0]), plan=row[1])


@staffeln_router.post(
    "/v1/backup",
    name="staffeln_backup_check",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"enum": ["True", "False"]}}}}},
)
def staffeln_backup_check(request: Request, backup_id: BackupId) -> PlainTextResponse:
    """staffeln's form, for a Cinder policy: ``True`` when the backup is *not* one safehold
    manages (it may be deleted), ``False`` when it is."""
    return PlainTextResponse("False" if _find(request, backup_id, None) else "True")
