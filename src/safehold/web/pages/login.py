"""Logging in with a token, adding another project's token to the session, and out."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from safehold.api.state import api_state
from safehold.api.tokens import verify_token
from safehold.catalog import TokenRole
from safehold.errors import UsageError
from safehold.web.mount import web_router
from safehold.web.pages.common import WebAll, read_form
from safehold.web.render import page
from safehold.web.session import (
    PREFIX,
    check_same_origin,
    clear_cookie,
    maybe_session,
    set_cookie,
    tokens_of,
    with_token,
)

__all__ = ["router"]

router = web_router()


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a dashboard path only (no open redirect)."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return PREFIX + "/"


@router.get("/login", name="web_login")
def login_form(
    request: Request,
    next_: Annotated[str | None, Query(alias="next", max_length=2000)] = None,
) -> HTMLResponse:
    """The login form; while logged in, the form that adds a project to the session."""
    session = maybe_session(request)
    return page(request, "login.html", session, next=_safe_next(next_), error=None)


@router.post("/login", name="web_login_post")
async def login(request: Request) -> Response:
    """Check the token; keep it in the session cookie (beside the session's tokens of
    other projects, in place of its own project's) and go on, or say why not."""
    # No CSRF value (the first login has no session): a login from another site is
    # refused by its origin, and the cookie is SameSite=Strict.
    check_same_origin(request)
    form = await read_form(request, None)
    session = maybe_session(request)
    state = api_state(request)
    address = request.client.host if request.client else "unknown"
    state.limiter.check(address)
    token = form.get("token", "").strip()
    who = verify_token(state.engine, token) if token else None
    target = _safe_next(form.get("next"))
    if who is None or who.role == TokenRole.AGENT:
        if who is None:
            state.limiter.fail(address)
        error = (
            "an agent's token cannot log in: use a viewer, operator or admin token"
            if who is not None
            else "that token is not valid (unknown, revoked or mistyped): "
            "make one with 'safehold token create'"
        )
        return page(request, "login.html", session, status=401, next=target, error=error)
    try:
        tokens = with_token(session, tokens_of(request), token, who)
    except UsageError as exc:
        return page(request, "login.html", session, status=400, next=target,
                    error=f"{exc}: {exc.hint}")  # fmt: skip
    response = RedirectResponse(target, status_code=303)
    set_cookie(response, request, tokens)
    return response


@router.post("/logout", name="web_logout")
async def logout(request: Request, session: WebAll) -> Response:
    """End the session, every project of it (the tokens stay valid: revoke one on its
    project's tokens page)."""
    await read_form(request, session)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    clear_cookie(response, request)
    return response
