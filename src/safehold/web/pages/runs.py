"""A run's page: its phases on a timeline, its hooks' output, its log lines (following
live while it runs), its snapshot, its error with the hint; cancel for operators."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from safehold.api.auth import Operator
from safehold.api.cursor import MAX_LIMIT
from safehold.api.routes import drills as api_drills
from safehold.api.routes import runs as api_runs
from safehold.api.schemas import RunDetail
from safehold.errors import NotFound
from safehold.web.assets import htmx_present
from safehold.web.mount import web_router
from safehold.web.pages.common import Web, authorise, read_form
from safehold.web.render import page
from safehold.web.session import PREFIX, Session
from safehold.web.svg import Span, timeline

__all__ = ["router"]

router = web_router()

LIVE = ("queued", "running")
REFRESH = 2  # seconds between a live page's reloads or polls


def _phases(run: RunDetail) -> tuple[Any, list[dict[str, Any]]]:
    """The phases' timeline, and their rows (phase, command, state, duration, output).

    A phase records its duration, not its start: the timeline lays them end to end, in
    the order they ran.
    """
    rows: list[dict[str, Any]] = []
    spans = []
    offset = 0.0
    for phase in run.phases:
        name = str(phase.get("phase") or "phase")
        seconds = float(phase.get("duration_s") or _between(phase) or 0.0)
        if phase.get("state") in ("succeeded", "failed", "running"):
            state = str(phase["state"])  # a drill's phase says its state itself
        elif phase.get("timed_out"):
            state = "timed_out"
        elif phase.get("interrupted"):
            state = "interrupted"
        else:
            state = "succeeded" if phase.get("exit_code") == 0 else "failed"
        output = {k: phase[k] for k in ("stdout", "stderr", "output") if phase.get(k)}
        rows.append(
            {
                "name": name,
                "state": state,
                "seconds": seconds,
                "output": output,
                "command": phase.get("command") or "",
                "error": phase.get("error"),
            }
        )

        spans.append(Span(offset, offset + seconds, name,
                          "succeeded" if state == "succeeded" else "failed",
                          f"{name}: {state}, {seconds:.1f} s"))  # fmt: skip
        offset += seconds
    return (timeline(spans, label="the run's hook phases, in order") if spans else None), rows


def _between(phase: dict[str, Any]) -> float | None:
    """A drill phase's seconds, from its start and end (it records no duration)."""
    try:
        start = datetime.fromisoformat(str(phase["started_at"]))
        end = datetime.fromisoformat(str(phase["ended_at"]))
    except (KeyError, ValueError):
        return None
    return (end - start).total_seconds()


def _context(request: Request, session: Any, run_id: uuid.UUID) -> dict[str, Any]:
    run = api_runs.get_run(request, session.who, run_id)
    chart, phases = _phases(run)
    drill = None
    if run.kind == "drill" and run.state not in LIVE:
        # The drill's own record (result, failed phase, the check's output), through the
        # API's route: a failed drill is followed from the drills page to here.
        found = api_drills.list_drills(request, session.who, plan=None, limit=MAX_LIMIT).items
        drill = next((d for d in found if d.run_id == str(run_id)), None)
    return {"run": run, "phases": phases, "phase_chart": chart, "live": run.state in LIVE,
            "refresh": REFRESH, "drill": drill}  # fmt: skip


@router.get("/runs/{run_id}", name="web_run")
def run_page(request: Request, session: Web, run_id: uuid.UUID) -> Response:
    """The run; while it runs, the page follows it (htmx polls, or the page reloads).
    A link without ``?project=`` (pasted from a log line or an alert) to a run of another
    of the session's projects is sent on to it."""
    try:
        context = _context(request, session, run_id)
    except NotFound:
        if "project" in request.query_params:
            raise
        owner = _owner(request, session, run_id)
        if owner is None:
            raise
        query = urlencode({"project": owner})
        return RedirectResponse(f"{PREFIX}/runs/{run_id}?{query}", status_code=303)
    headers = None
    if context["live"] and not htmx_present():
        # Without htmx the page reloads itself (a Refresh header: no script needed).
        headers = {"Refresh": str(REFRESH)}
    return page(request, "run.html", session, headers=headers, **context)


def _owner(request: Request, session: Session, run_id: uuid.UUID) -> str | None:
    """Which other project of the session the run belongs to, each asked with its own
    token (None: none of them)."""
    for grant in session.grants:
        if grant is session.current:
            continue
        try:
            api_runs.get_run(request, grant.who, run_id)
        except NotFound:
            continue
        return grant.project
    return None


@router.get("/runs/{run_id}/live", name="web_run_live")
def run_live(request: Request, session: Web, run_id: uuid.UUID) -> HTMLResponse:
    """The part of the run's page that changes while it runs (htmx swaps it in)."""
    return page(request, "run_live.html", session, **_context(request, session, run_id))


@router.post("/runs/{run_id}/cancel", name="web_run_cancel")
async def run_cancel(request: Request, session: Web, run_id: uuid.UUID) -> Response:
    """Cancel a queued or running run, through the API's route."""
    await read_form(request, session)
    await api_runs.cancel_run(request, authorise(Operator, session.who), run_id)
    return RedirectResponse(f"{PREFIX}/runs/{run_id}?{session.q}", status_code=303)
