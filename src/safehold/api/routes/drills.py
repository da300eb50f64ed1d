"""``/api/v1/drills`` and ``/api/v1/plans/{name}/drills``: the restore drills of the
token's project, newest first, each with its restore time against its target and its
plan's trend (docs/drills.md). Any role may read them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from safehold.api.auth import Reader
from safehold.api.cursor import MAX_LIMIT
from safehold.api.schemas import PRINTABLE, ErrorBody
from safehold.api.state import api_state
from safehold.errors import NotFound
from safehold.service.drills import drill_plan_name, drills_list

__all__ = ["DrillOut", "DrillPage", "plan_drills_router", "router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
}  # fmt: skip
router = APIRouter(prefix="/drills", tags=["drills"], responses=_ERRORS)
plan_drills_router = APIRouter(prefix="/plans", tags=["drills"], responses=_ERRORS)


class DrillOut(BaseModel):
    """One drill: the snapshot proven, the restore time (RTO) against its target, the
    result, and the plan's recent restore times (newest first) with their trend."""

    model_config = ConfigDict(extra="forbid")

    id: int
    run_id: str | None
    plan: str
    snapshot_id: str | None
    started_at: datetime
    finished_at: datetime | None
    restore_seconds: float | None
    rto_target_seconds: float | None
    over_target: bool
    bytes: int | None
    result: Literal["passed", "failed", "running"]
    failed_phase: Literal["sandbox", "restore", "check"] | None
    check_output: str | None
    error: str | None
    rtos: list[float]
    trend: Literal["better", "worse", "same"] | None


class DrillPage(BaseModel):
    """Drills, newest first."""

    items: list[DrillOut]


def _page(request: Request, project: str, plan: str | None, limit: int) -> DrillPage:
    rows = drills_list(api_state(request).engine, plan=plan, project=project, limit=limit)
    return DrillPage(
        items=[DrillOut(**{k: v for k, v in r.items() if k != "project"}) for r in rows]
    )


@router.get("", name="list_drills")
def list_drills(
    request: Request,
    who: Reader,
    plan: Annotated[str | None, Query(max_length=200, pattern=PRINTABLE)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> DrillPage:
    """The project's drills, newest first (of one plan: its source's name)."""
    return _page(request, who.project, plan, limit)


@plan_drills_router.get("/{name}/drills", name="list_plan_drills")
def list_plan_drills(
    request: Request,
    who: Reader,
    name: str,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> DrillPage:
    """One plan's drills, newest first (the plan, or its drill plan ``NAME.drill``)."""
    plan = name.removesuffix(".drill")
    with api_state(request).engine.connect() as db:
        known = db.execute(
            text(
                "SELECT 1 FROM plans WHERE project = :p AND name IN (:n, :d) UNION ALL "
                "SELECT 1 FROM drills WHERE project = :p AND plan = :n LIMIT 1"
            ),
            {"p": who.project, "n": plan, "d": drill_plan_name(plan)},
        ).first()
    if known is None:
        raise NotFound(f"no plan {name!r}", hint="list them with GET /api/v1/plans")
    return _page(request, who.project, plan, limit)
