"""A browser's session: the token cookie, the principal it stands for, and CSRF checks.

The cookie holds the API token itself rather than a server-side session id: the token is
already a revocable, role-carrying secret checked on every request
(:func:`~safehold.api.tokens.verify_token`), so revoking it ends its browser sessions too,
and the service keeps no session table and loses no session on restart. The cookie is
HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it) and Secure
when the request came over TLS; its path is the dashboard's.

CSRF: every form carries ``csrf``, an HMAC of a fixed label keyed with the session's token:
another site cannot compute it without the token. A POST is also refused when the browser
says it came from another site (``Sec-Fetch-Site: cross-site``) or its ``Origin`` is not
this server's.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response

from safehold.api.state import api_state
from safehold.api.tokens import Principal, verify_token
from safehold.catalog import TokenRole
from safehold.errors import Forbidden, Unauthenticated

__all__ = [
    "COOKIE",
    "PREFIX",
    "Session",
    "check_csrf",
    "check_same_origin",
    "clear_cookie",
    "csrf_for",
    "session_of",
    "set_cookie",
]

PREFIX = "/ui"
COOKIE = "safehold_session"
_LABEL = b"safehold-web-csrf-v1"
MAX_AGE = 12 * 3600  # seconds: a browser session ends after a working day


@dataclass(frozen=True)
class Session:
    """A logged-in browser: who it is and the CSRF value its forms carry."""

    who: Principal
    csrf: str

    @property
    def can_operate(self) -> bool:
        """Whether the role runs, pauses, resumes and restores."""
        return self.who.role in (TokenRole.ADMIN, TokenRole.OPERATOR)

    @property
    def is_admin(self) -> bool:
        """Whether the role manages tokens."""
        return self.who.role == TokenRole.ADMIN


def csrf_for(token: str) -> str:
    """The CSRF value of the session holding ``token``."""
    return hmac.new(token.encode("ascii", "replace"), _LABEL, hashlib.sha256).hexdigest()


def session_of(request: Request) -> Session:
    """The request's session, or :class:`Unauthenticated` (the pages send it to log in)."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise Unauthenticated("not logged in", hint="log in with a token")
    state = api_state(request)
    address = request.client.host if request.client else "unknown"
    state.limiter.check(address)
    who = verify_token(state.engine, token)
    if who is None:
        state.limiter.fail(address)
        raise Unauthenticated(
            "the session's token is no longer valid (revoked?)", hint="log in with a new token"
        )
    if who.role == TokenRole.AGENT:
        raise Forbidden("an agent's token has no use of the dashboard", hint="use another role")
    return Session(who, csrf_for(token))


def check_same_origin(request: Request) -> None:
    """Refuse a POST that the browser says another site sent."""
    if request.headers.get("sec-fetch-site", "same-origin") == "cross-site":
        raise Forbidden("a request from another site", hint="use the dashboard's own forms")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        here = urlsplit(str(request.base_url))
        there = urlsplit(origin)
        # The host as the browser addressed it; the scheme may differ behind a TLS proxy.
        if there.netloc != here.netloc:
            raise Forbidden("a request from another origin", hint="use the dashboard's own forms")
    elif origin == "null":
        raise Forbidden("a request from an opaque origin", hint="use the dashboard's own forms")


def check_csrf(request: Request, session: Session, value: str) -> None:
    """Refuse a POST without the session's CSRF value, or from another site."""
    check_same_origin(request)
    if not hmac.compare_digest(value.encode(), session.csrf.encode()):
        raise Forbidden(
            "the form's CSRF value does not match this session",
            hint="reload the page and submit the form again",
        )


def set_cookie(response: Response, request: Request, token: str) -> None:
    """Keep ``token`` in the session cookie."""
    response.set_cookie(
        COOKIE, token, max_age=MAX_AGE, path=PREFIX, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


def clear_cookie(response: Response, request: Request) -> None:
    """End the session cookie."""
    response.delete_cookie(
        COOKIE, path=PREFIX, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip
