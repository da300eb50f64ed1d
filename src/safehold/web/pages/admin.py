"""The agents page (every role) and the tokens page (admins): make and revoke tokens."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from safehold.api.auth import Admin
from safehold.api.routes import agent as api_agent
from safehold.api.routes import tokens as api_tokens
from safehold.api.schemas import TokenCreate
from safehold.web.mount import web_router
from safehold.web.pages.common import Web, authorise, read_form
from safehold.web.render import page
from safehold.web.session import PREFIX

__all__ = ["router"]

router = web_router()
ROLES = ("viewer", "operator", "admin", "agent")


@router.get("/agents", name="web_agents")
def agents_page(request: Request, session: Web) -> HTMLResponse:
    """The project's agents: online, last heartbeat, running jobs."""
    found = api_agent.list_agents(request, session.who)
    return page(request, "agents.html", session, agents=found)


@router.get("/tokens", name="web_tokens")
def tokens_page(request: Request, session: Web) -> HTMLResponse:
    """The project's tokens (admins only: the API's own check)."""
    found = api_tokens.list_project_tokens(request, authorise(Admin, session.who))
    return page(request, "tokens.html", session, tokens=found, roles=ROLES, made=None)


@router.post("/tokens", name="web_token_create")
async def token_create(request: Request, session: Web) -> Response:
    """Make a token; the page shows it this once."""
    form = await read_form(request, session)
    who = authorise(Admin, session.who)
    body = TokenCreate(role=form.get("role", ""), name=form.get("name", ""))  # type: ignore[arg-type]
    made = api_tokens.create_project_token(request, who, body)
    found = api_tokens.list_project_tokens(request, who)
    return page(request, "tokens.html", session, status=201, tokens=found, roles=ROLES, made=made)


@router.post("/tokens/{token_id}/revoke", name="web_token_revoke")
async def token_revoke(request: Request, session: Web, token_id: str) -> Response:
    """Revoke a token of the project."""
    await read_form(request, session)
    api_tokens.revoke_project_token(request, authorise(Admin, session.who), token_id)
    return RedirectResponse(f"{PREFIX}/tokens?{session.q}", status_code=303)
