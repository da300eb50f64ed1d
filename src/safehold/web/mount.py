"""The dashboard's place in the API's app: its routes under ``/ui``, its static files, and
``/`` sending a browser there.

Its routes use :class:`WebRoute`: an error becomes the HTML error page (the API's own
handlers answer JSON), and a request without a session is sent to the login form.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from safehold.errors import SafeholdError, Unauthenticated
from safehold.web.assets import STATIC, vendor_dir
from safehold.web.render import error_page
from safehold.web.session import PREFIX

__all__ = ["WebRoute", "mount_dashboard", "web_router"]


class WebRoute(APIRoute):
    """A dashboard route: errors as pages, no session as a redirect to log in."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, wrapped."""
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except Unauthenticated:
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                return RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)
            except SafeholdError as exc:
                return error_page(request, None, exc.http_status, str(exc), exc.hint)
            except (RequestValidationError, ValidationError):
                return error_page(request, None, 400, "the form or address is not valid",
                                  "check the values and try again")  # fmt: skip

        return wrapped


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard from ``app`` (the API's), under ``/ui``."""
    from safehold.web.pages import admin, login, plans, points, runs

    for module in (login, plans, runs, points, admin):
        app.include_router(module.router)
    # The vendored files' folder may be made after the service started: checked per request.
    app.mount(f"{PREFIX}/vendor", StaticFiles(directory=vendor_dir(), check_dir=False),
              name="web_vendor")  # fmt: skip
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="web_static")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)


def web_router() -> APIRouter:
    """A router for dashboard pages (not in the OpenAPI document)."""
    return APIRouter(prefix=PREFIX, route_class=WebRoute, include_in_schema=False)
