"""``/api/v1/projects``: the token's own project (a token sees no other)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from safehold.api.auth import Reader
from safehold.api.schemas import ErrorBody, ProjectOut
from safehold.api.state import api_state
from safehold.errors import NotFound

__all__ = ["router"]

router = APIRouter(
    prefix="/projects",
    tags=["projects"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


def _project(request: Request, name: str) -> ProjectOut:
    with api_state(request).engine.connect() as db:
        tokens = db.execute(
            text("SELECT count(*) FROM tokens WHERE project = :p AND revoked_at IS NULL"),
            {"p": name},
        ).scalar_one()
    plans = sum(1 for spec in api_state(request).plans().values() if spec.project == name)
    return ProjectOut(name=name, plans=plans, tokens=tokens)


@router.get("", name="list_projects")
def list_projects(request: Request, who: Reader) -> list[ProjectOut]:
    """The projects this token sees: its own."""
    return [_project(request, who.project)]


@router.get("/{name}", name="get_project", responses={404: {"model": ErrorBody}})
def get_project(request: Request, who: Reader, name: str) -> ProjectOut:
    """One project: the token's own (any other is not found)."""
    if name != who.project:
        raise NotFound(f"no project {name!r}", hint="a token sees its own project only")
    return _project(request, name)
