"""``/api/v1/destinations``, also served as ``/api/v1/endpoints`` (the OSB backup manager's
name for them): where a project's plans made through the API write. Their credentials
are write-only: sealed with the service's key when given, never returned (the view shows
the location without credentials and the options' names). Managing them is for admins;
any reading role lists them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response

from safehold.api.auth import Admin, Reader
from safehold.api.schemas import DestinationChanges, DestinationIn, DestinationOut, ErrorBody
from safehold.api.state import ApiState, api_state
from safehold.errors import DatabaseUnreachable
from safehold.service import destinations as dest
from safehold.service.vault import Vault

__all__ = ["PREFIXES", "router", "vault_of"]

# The same routes under both names: OSB's clients call them endpoints. The alias's
# operations are named after it (list_endpoints...), as operation ids must be unique.
PREFIXES = {"/destinations": "destination", "/endpoints": "endpoint"}

router = APIRouter(
    responses={status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409)},
)


def vault_of(state: ApiState) -> Vault:
    """The service's key, which destinations and plans made here are sealed with."""
    if state.vault is None:
        raise DatabaseUnreachable(
            "this API holds no service key", hint="destinations are managed by 'safehold serve'"
        )
    return state.vault


def _out(view: dest.DestinationView) -> DestinationOut:
    return DestinationOut(**view.to_json())


@router.get("", name="list_destinations")
def list_destinations(request: Request, who: Reader) -> list[DestinationOut]:
    """The project's destinations, without their credentials."""
    return [_out(v) for v in dest.list_destinations(api_state(request).engine, who.project)]


@router.get("/{name}", name="get_destination")
def get_destination(request: Request, who: Reader, name: str) -> DestinationOut:
    """One destination, without its credentials."""
    return _out(dest.get_destination(api_state(request).engine, who.project, name))


@router.post("", name="create_destination", status_code=201,
             responses={400: {"model": ErrorBody}, 409: {"model": ErrorBody}})  # fmt: skip
async def create_destination(request: Request, who: Admin, body: DestinationIn) -> DestinationOut:
    """Make a destination: a repository block as the configuration file's (``location``,
    a password or a way to get one, ``options``...); its credentials are sealed."""
    state = api_state(request)
    block: dict[str, Any] = body.model_dump(exclude={"name"}, exclude_none=True)
    view = await asyncio.to_thread(
        dest.create_destination, state.engine, vault_of(state), who.project, body.name, block
    )
    return _out(view)


@router.patch("/{name}", name="update_destination",
              responses={400: {"model": ErrorBody}})  # fmt: skip
async def update_destination(
    request: Request, who: Admin, name: str, changes: DestinationChanges
) -> DestinationOut:
    """Change a destination: the keys given replace the stored ones (null removes one)."""
    state = api_state(request)
    view = await asyncio.to_thread(
        dest.update_destination, state.engine, vault_of(state), who.project, name,
        changes.model_dump(),
    )  # fmt: skip
    return _out(view)


@router.delete("/{name}", name="delete_destination", status_code=204,
               responses={409: {"model": ErrorBody}})  # fmt: skip
def delete_destination(request: Request, who: Admin, name: str) -> Response:
    """Delete a destination no plan uses (409 names the plans that do)."""
    dest.delete_destination(api_state(request).engine, who.project, name)
    return Response(status_code=204)
