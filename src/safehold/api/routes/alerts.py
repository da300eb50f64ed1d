"""``/api/v1/alerts``: the project's incidents (docs/alerts.md), as ``safehold alerts``
lists them: what was told, when, through how many messages, and whether it cleared."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from safehold.api.auth import Reader
from safehold.api.schemas import ErrorBody
from safehold.api.state import api_state
from safehold.service.alerts import incidents_list

__all__ = ["IncidentOut", "router"]

router = APIRouter(
    prefix="/alerts",
    tags=["alerts"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


class IncidentOut(BaseModel):
    """One incident: its condition, what it names, and how its messages went."""

    id: int
    kind: str  # run_failed, missed_slot, rpo_breach, drill_failed, verify_damage...
    plan: str
    subject: str
    state: str  # open | resolved
    opened_at: datetime
    resolved_at: datetime | None
    run_id: str | None
    phase: str | None
    error: str | None
    hint: str | None
    sent: int
    pending: int
    failed: int


@router.get("", name="list_alerts")
async def list_alerts(
    request: Request,
    who: Reader,
    resolved: Annotated[bool, Query(description="resolved incidents too")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[IncidentOut]:
    """The project's open incidents, newest first (``resolved``: resolved ones too)."""
    rows = await asyncio.to_thread(
        incidents_list, api_state(request).engine, include_resolved=resolved, limit=limit,
        project=who.project,
    )  # fmt: skip
    return [IncidentOut(**{k: v for k, v in row.items() if k != "project"}) for row in rows]
