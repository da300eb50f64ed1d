"""A browser's session: the token cookie, the principal of each project it holds, and
CSRF checks.

The cookie holds the API tokens themselves rather than a server-side session id: a token
is already a revocable, role-carrying secret checked on every request
(:func:`~safehold.api.tokens.verify_token`), so revoking it ends its browser sessions too,
and the service keeps no session table and loses no session on restart. The cookie is
HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it) and Secure
when the request came over TLS; its path is the dashboard's.

**Several projects**: every token belongs to one project and the API has no global admin
(docs/api.md), so a browser that watches several projects holds one token per project —
logging in again while logged in adds a project (:func:`with_token`). The cookie keeps
them joined by :data:`SEPARATOR`, which no token contains. A :class:`Session` has a
:class:`Grant` (principal and role) per project, and its *current* one: the project of
what the page shows or changes (its ``project`` query parameter, the first project's when
absent). A page acts with the current grant's principal only — never another project's
token — so each project's role holds as the API's routes check it. A token revoked since
drops out of the session (the cookie is rewritten); when none is left, the browser logs in
again.

CSRF: every form carries ``csrf``, an HMAC of a fixed label keyed with all the session's
tokens: another site cannot compute it without them. A POST is also refused when the
browser says it came from another site (``Sec-Fetch-Site: cross-site``) or its ``Origin``
is not this server's.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace
from typing import Annotated
from urllib.parse import urlencode, urlsplit

from fastapi import Query, Request
from fastapi.responses import Response

from safehold.api.state import api_state
from safehold.api.tokens import Principal, verify_tokens
from safehold.catalog import TokenRole
from safehold.errors import Forbidden, Unauthenticated, UsageError

__all__ = [
    "COOKIE",
    "MAX_PROJECTS",
    "PREFIX",
    "SEPARATOR",
    "Grant",
    "Session",
    "check_csrf",
    "check_same_origin",
    "clear_cookie",
    "csrf_for",
    "maybe_session",
    "rewrite_cookie",
    "session_of",
    "session_of_all",
    "set_cookie",
    "tokens_of",
    "with_token",
]

PREFIX = "/ui"
COOKIE = "safehold_session"
_LABEL = b"safehold-web-csrf-v1"
MAX_AGE = 12 * 3600  # seconds: a browser session ends after a working day
SEPARATOR = "."  # not in a token (shk_<hex>_<base64url>): joins the cookie's tokens
MAX_PROJECTS = 20  # tokens a session holds: each is checked on every request
MAX_COOKIE = 3800  # characters: under the 4,096 bytes a browser keeps of a cookie


@dataclass(frozen=True)
class Grant:
    """One project of the session: its token's principal."""

    who: Principal

    @property
    def project(self) -> str:
        """The project the token belongs to."""
        return self.who.project

    @property
    def can_operate(self) -> bool:
        """Whether the role runs, pauses, resumes and restores."""
        return self.who.role in (TokenRole.ADMIN, TokenRole.OPERATOR)

    @property
    def is_admin(self) -> bool:
        """Whether the role manages tokens."""
        return self.who.role == TokenRole.ADMIN


@dataclass(frozen=True)
class Session:
    """A logged-in browser: a grant per project (in the order logged in), the current one
    (the page's project), and the CSRF value its forms carry."""

    grants: tuple[Grant, ...]
    current: Grant
    csrf: str

    @property
    def who(self) -> Principal:
        """The principal of the page's project: the only one its actions use."""
        return self.current.who

    @property
    def can_operate(self) -> bool:
        """Whether the page's project's role runs, pauses, resumes and restores."""
        return self.current.can_operate

    @property
    def is_admin(self) -> bool:
        """Whether the page's project's role manages tokens."""
        return self.current.is_admin

    @property
    def projects(self) -> list[str]:
        """The session's projects, in the order logged in."""
        return [grant.project for grant in self.grants]

    @property
    def q(self) -> str:
        """``project=NAME`` of the page's project, for its links and forms."""
        return urlencode({"project": self.current.project})

    def grant(self, project: str) -> Grant | None:
        """The session's grant of ``project``, if it holds one."""
        return next((grant for grant in self.grants if grant.project == project), None)

    def at(self, project: str | None) -> Session:
        """The session with ``project`` current (the first project when None or empty);
        :class:`Forbidden` when it holds no token of that project."""
        if not project:
            return replace(self, current=self.grants[0])
        found = self.grant(project)
        if found is None:
            raise Forbidden(
                f"this session holds no token of project {project!r}",
                hint="log in with a token of that project: logging in again adds a project",
            )
        return replace(self, current=found)


def csrf_for(*tokens: str) -> str:
    """The CSRF value of the session holding ``tokens`` (in any order)."""
    key = "\n".join(sorted(tokens)).encode("ascii", "replace")
    return hmac.new(key, _LABEL, hashlib.sha256).hexdigest()


def tokens_of(request: Request) -> list[str]:
    """The tokens the request's cookie holds (unchecked; at most :data:`MAX_PROJECTS`)."""
    value = request.cookies.get(COOKIE) or ""
    return [token for token in value.split(SEPARATOR) if token][:MAX_PROJECTS]


def _load(request: Request) -> Session:
    """The session of the request's cookie, every token checked; :class:`Unauthenticated`
    when none is valid."""
    tokens = tokens_of(request)
    if not tokens:
        raise Unauthenticated("not logged in", hint="log in with a token")
    state = api_state(request)
    address = request.client.host if request.client else "unknown"
    state.limiter.check(address)
    kept: list[str] = []
    grants: dict[str, Grant] = {}
    for token, who in zip(tokens, verify_tokens(state.engine, tokens), strict=True):
        if who is None:
            # A wrong token counts against the address as the API's do; the cookie is
            # rewritten without it (:func:`rewrite_cookie`), so it is not tried again.
            state.limiter.fail(address)
            continue
        # An agent's token never logs in, and a project has one token in a session: such
        # a token was not put here by this dashboard.
        if who.role != TokenRole.AGENT and who.project not in grants:
            kept.append(token)
            grants[who.project] = Grant(who)
    if len(kept) < len(tokens):
        request.state.web_tokens = kept
    if not kept:
        raise Unauthenticated(
            "the session's tokens are no longer valid (revoked?)", hint="log in with a new token"
        )
    first = next(iter(grants.values()))
    return Session(tuple(grants.values()), first, csrf_for(*kept))


def session_of(
    request: Request, project: Annotated[str | None, Query(max_length=64)] = None
) -> Session:
    """The request's session with the project of its ``project`` query parameter current
    (the first project's without one), or :class:`Unauthenticated` (the pages send it to
    log in)."""
    return _load(request).at(project)


def session_of_all(request: Request) -> Session:
    """The request's session, its ``project`` parameter left to the page (the overview's
    filter, where a project not in the session shows no plan rather than an error)."""
    return _load(request)


def maybe_session(request: Request) -> Session | None:
    """The request's session, or None when it has none (the login page, either way)."""
    try:
        return _load(request)
    except Unauthenticated:
        return None


def with_token(session: Session | None, tokens: list[str], token: str, who: Principal) -> list[str]:
    """The cookie's tokens with ``token`` (of ``who``) added, or in place of the session's
    token of the same project; :class:`UsageError` past :data:`MAX_PROJECTS` or the cookie's
    size."""
    kept: list[str] = []
    for old in tokens:
        # The session's own grants say which token is which project's (checked just now);
        # one no longer valid is left out.
        project = _project_of(session, old)
        if project == who.project:
            kept.append(token)  # in its place: the projects keep their order
        elif project is not None:
            kept.append(old)
    if token not in kept:
        kept.append(token)
    if len(kept) > MAX_PROJECTS or len(SEPARATOR.join(kept)) > MAX_COOKIE:
        raise UsageError(
            f"this session holds {len(kept) - 1} projects, the most it may",
            hint="log out, then log in to the projects you need",
        )
    return kept


def _project_of(session: Session | None, token: str) -> str | None:
    if session is None:
        return None
    token_id = token.split("_")[1] if token.count("_") >= 2 else ""
    found = next((g for g in session.grants if g.who.token_id == token_id), None)
    return None if found is None else found.project


def rewrite_cookie(request: Request, response: Response) -> None:
    """Keep in the cookie only the tokens still valid, when one dropped out this request."""
    kept: list[str] | None = getattr(request.state, "web_tokens", None)
    mine = f"{COOKIE}=".encode()
    if kept is None or any(
        name == b"set-cookie" and value.startswith(mine) for name, value in response.raw_headers
    ):
        return  # nothing dropped, or the page set the cookie itself (log in, log out)
    if kept:
        set_cookie(response, request, kept)
    else:
        clear_cookie(response, request)


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


def set_cookie(response: Response, request: Request, tokens: list[str]) -> None:
    """Keep ``tokens`` in the session cookie."""
    response.set_cookie(
        COOKIE, SEPARATOR.join(tokens), max_age=MAX_AGE, path=PREFIX, httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip


def clear_cookie(response: Response, request: Request) -> None:
    """End the session cookie."""
    response.delete_cookie(
        COOKIE, path=PREFIX, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip
