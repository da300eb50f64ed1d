"""``/api/v1/workers``: the ``safehold serve`` processes that use this catalog, as
``safehold workers`` lists them. They serve every project: any reading role sees them
(name, host, process id, heartbeats; nothing of any project's)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from safehold.api.auth import Reader
from safehold.api.schemas import ErrorBody, WorkerOut
from safehold.api.state import api_state
from safehold.service.workers import list_workers

__all__ = ["router"]

router = APIRouter(
    prefix="/workers",
    tags=["workers"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


@router.get("", name="list_workers")
async def list_service_workers(request: Request, who: Reader) -> list[WorkerOut]:
    """The service's processes: alive (a heartbeat in the last 30 s), stopped, or lost."""
    rows = await asyncio.to_thread(list_workers, api_state(request).engine)
    return [WorkerOut(**row.to_json()) for row in rows]
