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
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from safehold.errors import SafeholdError, Unauthenticated
from safehold.web.assets import HTMX, STATIC, vendor_dir
from safehold.web.render import error_page
from safehold.web.session import PREFIX, rewrite_cookie

__all__ = ["WebRoute", "mount_dashboard", "web_router"]


class WebRoute(APIRoute):
    """A dashboard route: errors as pages, no session as a redirect to log in."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, wrapped."""
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            response = await answer(request)
            # A token revoked since dropped out of the session: the cookie forgets it.
            rewrite_cookie(request, response)
            return response

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Unauthenticated:
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                return RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)
            except SafeholdError as exc:
                return error_page(request, None, exc.http_status, str(exc), exc.hint)
            except (sa_exc.OperationalError, sa_exc.InterfaceError):
                # Nothing of the driver's message: it may name the database's address.
                return error_page(request, None, 503, "the service's database cannot be reached",
                                  "try again in a moment; the service's log says why")  # fmt: skip
            except (RequestValidationError, ValidationError, sa_exc.DataError):
                return error_page(request, None, 400, "the form or address is not valid",
                                  "check the values and try again")  # fmt: skip

        return wrapped


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard from ``app`` (the API's), under ``/ui``."""
    from safehold.web.pages import admin, browse, login, plans, points, proving, runs

    for module in (login, plans, runs, points, browse, proving, admin):
        app.include_router(module.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="web_static")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    @app.get(f"{PREFIX}/vendor/{HTMX}", include_in_schema=False)
    def htmx() -> Response:
        # Looked up per request, as the pages do: scripts/web-assets.sh may run after the
        # service started, and SAFEHOLD_WEB_ASSETS names where it put the file.
        path = vendor_dir() / HTMX
        if not path.is_file():
            return Response(status_code=404)
        return FileResponse(path, media_type="text/javascript",
                            headers={"Cache-Control": "max-age=86400"})  # fmt: skip


def web_router() -> APIRouter:
    """A router for dashboard pages (not in the OpenAPI document)."""
    return APIRouter(prefix=PREFIX, route_class=WebRoute, include_in_schema=False)
