"""The drills page (restore times against their targets, per plan, with the repositories'
verification coverage, growth and deduplication) and the alerts page (open and resolved
incidents)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse

from safehold.api.routes import alerts as api_alerts
from safehold.api.routes import drills as api_drills
from safehold.api.routes import verification as api_verification
from safehold.api.state import api_state
from safehold.clock import utcnow
from safehold.web.mount import web_router
from safehold.web.pages.common import Web
from safehold.web.render import page
from safehold.web.trends import repository_trends, rto_charts

__all__ = ["router"]

router = web_router()


@router.get("/drills", name="web_drills")
def drills_page(request: Request, session: Web) -> HTMLResponse:
    """The project's drills, newest first, and the verification coverage of the
    repositories its plans write to."""
    found = api_drills.list_drills(request, session.who, plan=None, limit=200).items
    coverage = api_verification.list_verification(request, session.who)
    state = api_state(request)
    repos = repository_trends(state.engine, state.plans(), session.who.project, utcnow())
    return page(request, "drills.html", session, drills=found, coverage=coverage,
                rto_charts=rto_charts(found), repos=repos)  # fmt: skip


@router.get("/alerts", name="web_alerts")
async def alerts_page(request: Request, session: Web) -> HTMLResponse:
    """The project's incidents: open ones first, then the resolved."""
    found = await api_alerts.list_alerts(request, session.who, resolved=True, limit=200)
    ordered = sorted(found, key=lambda i: (i.state != "open", -i.opened_at.timestamp()))
    return page(request, "alerts.html", session, incidents=ordered)
