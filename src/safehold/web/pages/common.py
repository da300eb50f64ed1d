"""What the page modules share: the session dependency, forms, and the API's role checks."""

from __future__ import annotations

from typing import Annotated, Any, get_args
from urllib.parse import parse_qs

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam

from safehold.api.tokens import Principal
from safehold.errors import UsageError
from safehold.web.session import Session, check_csrf, session_of, session_of_all

__all__ = ["Form", "Web", "WebAll", "authorise", "read_form"]

# A page of one project (its ``project`` parameter, or the session's first project).
Web = Annotated[Session, Depends(session_of)]
# The overview: every project of the session, ``project`` a filter of its own.
WebAll = Annotated[Session, Depends(session_of_all)]
Form = dict[str, str]
MAX_FIELD = 8192


async def read_form(request: Request, session: Session | None) -> Form:
    """The POST's urlencoded fields (the first of each name), its CSRF value checked
    against ``session`` when there is one (always: only the login form has none)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise UsageError("the dashboard's forms are urlencoded", hint="use the page's form")
    body = (await request.body()).decode("utf-8", "replace")
    fields = {name: values[0] for name, values in parse_qs(body, max_num_fields=50).items()}
    if any(len(value) > MAX_FIELD for value in fields.values()):
        raise UsageError("a form field is too long", hint="shorten it")
    if session is not None:
        check_csrf(request, session, fields.get("csrf", ""))
    return fields


def authorise(alias: Any, who: Principal) -> Principal:
    """``who``, if the API's dependency ``alias`` (:data:`~safehold.api.auth.Operator`,
    :data:`~safehold.api.auth.Admin`...) allows it; its 403 otherwise.

    The check is the API's own dependency taken from its alias, so a page allows exactly
    what the API's route does, and follows it if the API's roles change.
    """
    for meta in get_args(alias)[1:]:
        if isinstance(meta, DependsParam) and meta.dependency is not None:
            allowed: Principal = meta.dependency(who)
            return allowed
    raise AssertionError(f"{alias!r} carries no dependency")
