"""Restore points: each plan's chains drawn as full -> incrementals, held points marked;
hold, release, and a restore job (to the source's own place or a new target) that the
run's page then follows."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from safehold.api.auth import Operator
from safehold.api.cursor import CURSOR_PATTERN
from safehold.api.routes import restore_points as api_points
from safehold.api.schemas import HoldRequest, RestorePointOut, RestoreRequest
from safehold.errors import UsageError
from safehold.web.mount import web_router
from safehold.web.pages.common import Web, authorise, read_form
from safehold.web.render import page
from safehold.web.session import PREFIX

__all__ = ["router"]

router = web_router()
PAGE = 200  # points a page


@dataclass
class Chain:
    """A full backup and the incrementals on it, oldest first (an isolated point alone)."""

    points: list[RestorePointOut] = field(default_factory=list)


def chains(points: list[RestorePointOut]) -> dict[str, list[Chain]]:
    """The points by plan, each plan's chains newest first, each chain oldest first."""
    by_plan: dict[str, dict[str, Chain]] = {}
    for point in points:
        key = point.chain_id or f"point-{point.id}"
        by_plan.setdefault(point.plan, {}).setdefault(key, Chain()).points.append(point)
    out: dict[str, list[Chain]] = {}
    for plan, found in sorted(by_plan.items()):
        for chain in found.values():
            chain.points.sort(key=lambda p: (p.chain_seq or 0, p.taken_at))
        out[plan] = sorted(found.values(), key=lambda c: c.points[-1].taken_at, reverse=True)
    return out


def previous(points: list[RestorePointOut]) -> dict[int, int]:
    """Each point's previous point of its plan (on this page), whatever its chain: the
    page links the diff between the two."""
    out: dict[int, int] = {}
    last: dict[str, int] = {}
    for point in sorted(points, key=lambda p: (p.taken_at, p.id)):
        if point.plan in last:
            out[point.id] = last[point.plan]
        last[point.plan] = point.id
    return out


@router.get("/restore-points", name="web_points")
def points_page(
    request: Request,
    session: Web,
    plan: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=200, pattern=CURSOR_PATTERN)] = None,
) -> HTMLResponse:
    """The project's restore points (of one plan), by chain."""
    found = api_points.list_restore_points(
        request, session.who, plan or None, None, False, PAGE, cursor
    )
    return page(request, "points.html", session, chains=chains(found.items),
                previous=previous(found.items), next_cursor=found.next_cursor,
                plan=plan or "")  # fmt: skip


@router.post("/restore-points/{ref}/{action}", name="web_point_action")
async def point_action(
    request: Request, session: Web, ref: str, action: Literal["restore", "hold", "release"]
) -> Response:
    """Restore the point (then follow the job on its run's page), hold or release it."""
    form = await read_form(request, session)
    who = authorise(Operator, session.who)
    if action == "restore":
        where = form.get("where", "target")
        target = form.get("target", "").strip() or None
        if where == "target" and target is None:
            raise UsageError(
                "a restore into a new target needs its path",
                hint="write the folder to restore into, or pick the original place",
            )
        # From the files page: one file or folder of the point, into a new target.
        paths = [form["path"]] if form.get("path") else None
        body = RestoreRequest(target=target if where == "target" else None,
                              replace=form.get("replace") == "on", paths=paths)  # fmt: skip
        queued = await api_points.restore_restore_point(request, who, ref, body)
        return RedirectResponse(f"{PREFIX}/runs/{queued.run_id}?{session.q}", status_code=303)
    if action == "hold":
        reason = form.get("reason", "").strip() or None
        await asyncio.to_thread(api_points.hold_restore_point, request, who, ref,
                                HoldRequest(reason=reason))  # fmt: skip
    else:
        await asyncio.to_thread(api_points.release_restore_point, request, who, ref)
    return RedirectResponse(f"{PREFIX}/restore-points?{session.q}", status_code=303)
