"""``POST /api/v1/plans``, ``PUT`` and ``DELETE /api/v1/plans/{name}``: plans made through
the API (admins). A plan is a source block as the configuration file's (``type``, its
settings, ``hooks``, ``schedule`` and the other plan keys) with ``repository:`` (a
destination of the project) and optional ``copies:``; its credentials are sealed. The
configuration file's plans are read-only here (409). The service starts running a new or
changed plan within 5 seconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response

from safehold.api.auth import Admin
from safehold.api.routes.destinations import vault_of
from safehold.api.schemas import ErrorBody, PlanBlock, PlanDefinition, PlanUpdate
from safehold.api.state import api_state
from safehold.errors import UsageError
from safehold.service import api_plans

__all__ = ["router"]

router = APIRouter(
    prefix="/plans",
    tags=["plans"],
    responses={status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409)},
)


def _out(view: api_plans.PlanView) -> PlanDefinition:
    return PlanDefinition(**view.to_json())


@router.post("", name="create_plan", status_code=201)
async def create_plan(request: Request, who: Admin, body: PlanBlock) -> PlanDefinition:
    """Make a plan in the token's project (its name must be free in the project)."""
    state = api_state(request)
    block: dict[str, Any] = body.model_dump(exclude={"name"})
    view = await asyncio.to_thread(
        api_plans.create_plan, state.engine, vault_of(state), who.project, body.name, block
    )
    return _out(view)


@router.put("/{name}", name="update_plan", responses={404: {"model": ErrorBody}})
async def update_plan(request: Request, who: Admin, name: str, block: PlanUpdate) -> PlanDefinition:
    """Replace a plan's block (``<sealed>`` where the plan showed it keeps that secret);
    its slots, runs and restore points stay."""
    state = api_state(request)
    given = block.model_dump()
    # The block as POST took it (with its name) is welcome back; a plan keeps its name.
    if given.pop("name", name) != name:
        raise UsageError("a plan cannot be renamed", hint="make a new plan, then delete this one")
    view = await asyncio.to_thread(
        api_plans.update_plan, state.engine, vault_of(state), who.project, name, given
    )
    return _out(view)


@router.get("/{name}/definition", name="get_plan_definition", responses={404: {"model": ErrorBody}})
def get_plan_definition(request: Request, who: Admin, name: str) -> PlanDefinition:
    """A plan's block as stored (its secrets as ``<sealed>``; a file plan has none here)."""
    return _out(api_plans.get_plan(api_state(request).engine, who.project, name))


@router.delete("/{name}", name="delete_plan", status_code=204,
               responses={404: {"model": ErrorBody}})  # fmt: skip
def delete_plan(request: Request, who: Admin, name: str) -> Response:
    """Delete a plan made through the API; its snapshots stay in the repository."""
    api_plans.delete_plan(api_state(request).engine, who.project, name)
    return Response(status_code=204)
