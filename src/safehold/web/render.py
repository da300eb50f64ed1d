"""Pages from templates: one Jinja2 environment, the context every page shares, and the
error page."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from safehold import __version__
from safehold.clock import utcnow
from safehold.web import format as fmt
from safehold.web.assets import TEMPLATES, htmx_present
from safehold.web.session import PREFIX, Session
from safehold.web.svg import strip

__all__ = ["error_page", "page"]

_ENV = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(size=fmt.size, duration=fmt.duration, when=fmt.when)


def _ago(moment: datetime | None) -> str:
    return fmt.ago(moment, utcnow())


_ENV.filters["ago"] = _ago


def _strip(card: Any) -> Markup:
    return strip(card.cells, label=f"the last 30 days of {card.name}'s slots")


_ENV.globals["strip"] = _strip
# The pages of one project that list its objects: with several projects in the session,
# they offer the others (the same page, ``?project=``).
_ENV.globals["lists"] = frozenset(
    f"{PREFIX}/{name}" for name in ("restore-points", "agents", "drills", "alerts", "tokens")
)


def page(
    request: Request,
    template: str,
    session: Session | None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """``template`` rendered with ``context`` and what every page needs."""
    shared = {
        "request": request,
        "session": session,
        "prefix": PREFIX,
        "version": __version__,
        "htmx": htmx_present(),
    }
    html = _ENV.get_template(template).render(**shared, **context)
    response = HTMLResponse(html, status_code=status, headers=headers)
    # A page shows a project's state: no cache keeps it, no other site frames it.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    )
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def error_page(
    request: Request, session: Session | None, status: int, message: str, hint: str | None
) -> HTMLResponse:
    """The one error page: what happened, and what to do (as the API's body says)."""
    return page(request, "error.html", session, status=status, message=message, hint=hint)
