"""A restore point's files (folder by folder, a page at a time) with a restore of one file
or folder into a new target, and the diff between two points of a plan. Both read the
snapshot through the API's own routes (a child process with the plan's configuration)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import HTMLResponse

from safehold.api.routes import snapshot_files as api_files
from safehold.api.schemas import PRINTABLE
from safehold.web.mount import web_router
from safehold.web.pages.common import Web
from safehold.web.render import page

__all__ = ["router"]

router = web_router()
PAGE = 100  # items of a folder a page


def crumbs(path: str) -> list[tuple[str, str]]:
    """``/srv/data/x`` as (name, path) pairs for the trail: ``/``, ``srv``, ``data``, ``x``."""
    out = [("/", "/")]
    parts = [p for p in path.split("/") if p]
    for i, name in enumerate(parts):
        out.append((name, "/" + "/".join(parts[: i + 1])))
    return out


@router.get("/restore-points/{ref}/files", name="web_point_files")
async def files_page(
    request: Request,
    session: Web,
    ref: str,
    path: Annotated[str, Query(max_length=4096, pattern=PRINTABLE)] = "/",
    offset: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    """One folder of the point: its folders and files with sizes and times, a page of
    :data:`PAGE`, each with a restore of it into a new target (for roles that may)."""
    found = await api_files.list_restore_point_files(request, session.who, ref, path, offset, PAGE)
    return page(request, "files.html", session, listing=found, crumbs=crumbs(found.path),
                ref=ref, page_size=PAGE)  # fmt: skip


@router.get("/restore-points/{ref}/diff", name="web_point_diff")
async def diff_page(
    request: Request,
    session: Web,
    ref: str,
    against: Annotated[str, Query(min_length=1, max_length=200, pattern=PRINTABLE)],
) -> HTMLResponse:
    """What changed from the point ``against`` to the point ``ref``."""
    found = await api_files.diff_restore_points(request, session.who, ref, against)
    return page(request, "diff.html", session, diff=found)
