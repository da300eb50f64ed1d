"""``/api/v1/tokens``: an admin lists, makes and revokes the tokens of its project."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from safehold.api.auth import Admin
from safehold.api.schemas import ErrorBody, TokenCreate, TokenCreated, TokenOut
from safehold.api.state import api_state
from safehold.api.tokens import create_token, list_tokens, revoke_token

__all__ = ["router"]

router = APIRouter(
    prefix="/tokens",
    tags=["tokens"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


@router.get("", name="list_tokens")
def list_project_tokens(request: Request, who: Admin) -> list[TokenOut]:
    """The project's tokens, revoked ones included; never a secret."""
    found = list_tokens(api_state(request).engine, project=who.project)
    return [TokenOut(**info.to_json()) for info in found]


@router.post("", name="create_token", status_code=201)
def create_project_token(request: Request, who: Admin, body: TokenCreate) -> TokenCreated:
    """Make a token in the project; the reply holds it, this once only."""
    made = create_token(
        api_state(request).engine, project=who.project, role=body.role, name=body.name
    )
    return TokenCreated(**made.info.to_json(), token=made.token)


@router.post("/{token_id}/revoke", name="revoke_token", responses={404: {"model": ErrorBody}})
def revoke_project_token(
    request: Request,
    who: Admin,
    token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="from GET /tokens")],
) -> TokenOut:
    """Revoke a token of the project (its row stays, to show when it was revoked)."""
    info = revoke_token(api_state(request).engine, token_id, project=who.project)
    return TokenOut(**info.to_json())
