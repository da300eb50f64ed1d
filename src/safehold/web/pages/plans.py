"""The overview (every plan of the session's projects at a glance) and a plan's page, with run now,
pause and resume."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import text

from safehold.api.auth import Operator
from safehold.api.routes import plans as api_plans
from safehold.api.state import api_state
from safehold.clock import utcnow
from safehold.errors import NotFound
from safehold.service import destinations as dest
from safehold.web.format import duration, size, when
from safehold.web.mount import web_router
from safehold.web.overview import overview, rpo_target
from safehold.web.pages.common import Web, WebAll, authorise, read_form
from safehold.web.render import page
from safehold.web.session import PREFIX
from safehold.web.svg import Bar, Span, bar_chart, timeline

__all__ = ["router"]

router = web_router()

CardState = Literal["ok", "failing", "at_risk", "paused", "new"]


@router.get("/", name="web_overview")
def overview_page(
    request: Request,
    session: WebAll,
    state: Annotated[CardState | None, Query()] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    project: Annotated[str | None, Query(max_length=64)] = None,
    page_no: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    """The banner over every project of the session, a card per plan (filtered), and
    every repository and destination."""
    api = api_state(request)
    # A token sees its own project only, whatever its role (docs/api.md: no global admin):
    # the session shows the projects it holds a token of, each read with its own token's
    # project; another project's name shows no plan and says how to add it, alike whether
    # that project exists or not.
    held = session.projects
    elsewhere = project if project and project not in held else None
    shown = overview(api.engine, api.plans(), held, utcnow(), state=state or None,
                     kind=kind or None, project=project or None, page=page_no)  # fmt: skip
    scope = [] if elsewhere else [project] if project else held
    destinations = [found for one in scope for found in dest.list_destinations(api.engine, one)]
    # Joined here, not by a loop in the template: a repository of 1,000 plans would cost
    # the page a few milliseconds more (bench/web.py).
    several = len(held) > 1
    repositories = [
        (location, ", ".join(f"{name} ({owner})" if several else name for owner, name in keys))
        for location, keys in shown.repositories
    ]
    return page(request, "overview.html", session, view=shown, destinations=destinations,
                repositories=repositories,
                filters={"state": state or "", "kind": kind or "", "project": project or ""},
                elsewhere=elsewhere, query=_query(state, kind, project))  # fmt: skip


def _query(state: str | None, kind: str | None, project: str | None) -> str:
    """The filters as a query string, for the pages' links."""
    kept = {"state": state, "kind": kind, "project": project}
    return urlencode({name: value for name, value in kept.items() if value})


_RUNS = text(
    """
    SELECT r.id, r.state, r.trigger, r.queued_at, r.started_at, r.ended_at, r.bytes_added,
      r.snapshot_id, r.error
    FROM runs r JOIN plans p ON p.id = r.plan_id
    WHERE p.project = :project AND p.name = :name AND r.kind IN ('backup', 'prune')
    ORDER BY r.queued_at DESC LIMIT 30
    """
)
_LEDGER = text(
    """
    SELECT s.slot_at, s.state, s.reason, s.run_id, s.ended_at
    FROM slots s JOIN plans p ON p.id = s.plan_id
    WHERE p.project = :project AND p.name = :name ORDER BY s.slot_at DESC LIMIT 20
    """
)
_OTHER = text(
    """
    SELECT r.id, r.kind, r.state, r.queued_at, r.ended_at, r.error
    FROM runs r JOIN plans p ON p.id = r.plan_id
    WHERE p.project = :project AND p.name = :name AND r.kind NOT IN ('backup', 'prune')
    ORDER BY r.queued_at DESC LIMIT 10
    """
)


def _charts(runs: Sequence[Any]) -> dict[str, Any]:
    ended = [r for r in reversed(runs) if r.started_at and r.ended_at]
    seconds = []
    for r in ended:
        took = (r.ended_at - r.started_at).total_seconds()
        seconds.append(Bar(took, f"{when(r.queued_at)}: {r.state}, {duration(took)}", r.state))
    added = [
        Bar(float(r.bytes_added or 0), f"{when(r.queued_at)}: {size(r.bytes_added)} added", r.state)
        for r in ended
    ]
    return {
        "duration": bar_chart(seconds, label="duration of the last runs, oldest first", unit="s"),
        "bytes": bar_chart(added, label="bytes added by the last runs, oldest first", unit="B"),
    }


def _ledger(slots: Sequence[Any]) -> Any:
    if not slots:
        return None
    first = slots[-1].slot_at
    spans = [
        Span(
            (s.slot_at - first).total_seconds(),
            ((s.ended_at or s.slot_at) - first).total_seconds(),
            f"{when(s.slot_at)} {s.state}" + (f" ({s.reason})" if s.reason else ""),
            "failed" if s.state == "timed_out" else s.state,
            f"slot {when(s.slot_at)}: {s.state}" + (f", {s.reason}" if s.reason else ""),
        )
        for s in reversed(slots)
    ]
    return timeline(spans, label="the plan's last slots, oldest first")


@router.get("/plans/{name}", name="web_plan")
def plan_page(request: Request, session: Web, name: str) -> HTMLResponse:
    """A plan: its schedule and next slots, its ledger, its runs and their charts (of the
    ``project`` parameter's project: plan names are unique per project only)."""
    api = api_state(request)
    spec = api.plans().get(f"{session.who.project}/{name}")
    if spec is None:
        raise NotFound(f"no plan {name!r} in project {session.who.project}",
                       hint="pick one on the overview")  # fmt: skip
    status = api_plans.get_plan(request, session.who, name)
    now = utcnow()
    upcoming = []
    if not status.paused:
        moment = now
        for _ in range(5):
            moment = spec.schedule.next_after(moment)
            upcoming.append(moment)
    params = {"project": spec.project, "name": spec.name}
    with api.engine.connect() as db:
        runs = db.execute(_RUNS, params).all()
        slots = db.execute(_LEDGER, params).all()
        others = db.execute(_OTHER, params).all()
    target = rpo_target(spec, now)
    return page(
        request, "plan.html", session, plan=status, spec=spec, upcoming=upcoming, runs=runs,
        others=others, slots=slots, ledger=_ledger(slots), charts=_charts(runs),
        rpo_target=None if target is None else timedelta(seconds=target),
    )  # fmt: skip


@router.post("/plans/{name}/{action}", name="web_plan_action")
async def plan_action(
    request: Request, session: Web, name: str, action: Literal["run", "pause", "resume"]
) -> Response:
    """Run now, pause or resume, through the API's own routes and role check, with the
    principal of the plan's project (its ``project`` parameter)."""
    await read_form(request, session)
    who = authorise(Operator, session.who)
    if action == "run":
        queued = await api_plans.run_plan(request, who, name)
        return RedirectResponse(f"{PREFIX}/runs/{queued.run_id}?{session.q}", status_code=303)
    change = api_plans.pause_plan if action == "pause" else api_plans.resume_plan
    await asyncio.to_thread(change, request, who, name)
    return RedirectResponse(f"{PREFIX}/plans/{name}?{session.q}", status_code=303)
