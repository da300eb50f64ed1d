"""The one place where errors become responses: ``{"error": {"code", "message", "hint"}}``.

Every :class:`~safehold.errors.SafeholdError` answers with its class's ``http_status`` and
a stable ``code``: the class name in snake case (``NotFound`` -> ``not_found``), so that a
client may act on the code while the message stays for people. FastAPI's validation
errors, Starlette's own (no such route, wrong method) and the database's connection
errors take the same shape; anything else is a 500 ``internal_error`` whose details stay
in the service's log. Messages never quote a request's values: a body may hold a token.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from safehold.errors import (
    DatabaseUnreachable,
    SafeholdError,
    TooManyRequests,
    Unauthenticated,
)

__all__ = ["error_code", "error_response", "install_error_handlers"]

log = logging.getLogger("safehold.api")

_STARLETTE_CODES = {
    400: ("invalid_request", "the request's body could not be read", "send JSON in UTF-8"),
    404: ("not_found", "no such route", "the API lives under /api/v1; see /openapi.json"),
    405: ("method_not_allowed", "this route does not take that method", None),
    413: ("request_too_large", "the request's body is too large", "send a smaller body"),
}


def error_code(cls: type[SafeholdError]) -> str:
    """The stable code of an error class: its name in snake case."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


def error_response(
    status: int, code: str, message: str, hint: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error body every failed call answers with."""
    body = {"error": {"code": code, "message": message, "hint": hint}}
    return JSONResponse(body, status_code=status, headers=headers)


def _safehold(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SafeholdError)
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.http_status >= 500:
        log.error("%s %s: %s", _request.method, _request.url.path, exc.message)
    return error_response(exc.http_status, error_code(type(exc)), exc.message, exc.hint, headers)


def _validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return error_response(
        422,
        "invalid_request",
        "the request is not valid: " + "; ".join(problems),
        "see the operation in /openapi.json",
    )


def _starlette(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, message, hint = _STARLETTE_CODES.get(
        exc.status_code, (f"http_{exc.status_code}", str(exc.detail), None)
    )
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path only (GET of
        # /tokens, not its POST): every route on it is asked.
        methods = set()
        for route in request.app.routes:
            if isinstance(route, Route) and route.matches(request.scope)[0] is Match.PARTIAL:
                methods |= route.methods or set()
        headers["Allow"] = ", ".join(sorted(methods))
    return error_response(exc.status_code, code, message, hint, headers)


def _database(request: Request, exc: Exception) -> JSONResponse:
    # The driver's text may name the server and user; the log keeps it, the reply does not.
    log.warning("%s %s: the database does not answer: %s", request.method, request.url.path,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__)  # fmt: skip
    error = DatabaseUnreachable(
        "the service's database does not answer", hint="try again; the service waits for it"
    )
    return _safehold(request, error)


def _data(request: Request, exc: Exception) -> JSONResponse:
    # A value PostgreSQL cannot hold (a NUL character in text): the request's fault.
    log.info("%s %s: a value the database refused: %s", request.method, request.url.path,
             type(getattr(exc, "orig", exc)).__name__)  # fmt: skip
    return error_response(
        422,
        "invalid_request",
        "a value of the request is not one the catalog can hold (a NUL character?)",
        "send printable text",
    )


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "the service failed to answer", "its log says why")


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to the one JSON shape on ``app``."""
    handlers: list[tuple[Any, Any]] = [
        (SafeholdError, _safehold),
        (RequestValidationError, _validation),
        (StarletteHTTPException, _starlette),
        (sa_exc.OperationalError, _database),
        (sa_exc.InterfaceError, _database),
        (sa_exc.DataError, _data),
        (Exception, _unexpected),
    ]
    for exc_class, handler in handlers:
        app.add_exception_handler(exc_class, handler)
