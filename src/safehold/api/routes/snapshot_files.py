"""``/api/v1/restore-points/{ref}/files`` and ``/diff``: what a restore point holds, and
what changed between two points of a plan.

Reading a snapshot needs its repository, which the service reaches through the plan's
configuration (the file's repository and password; an API plan's generated file and its
vault secrets, in the child's environment only). The reading runs in a child process,
``safehold ls --json --config FILE`` or ``safehold diff --json --config FILE``, as a
worker runs a backup (runs/child.py): the API process never opens a repository, loads an
index or holds a repository lock, and a slow or large listing is bounded by a time-out
and killed with its process group.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from safehold.api.auth import Reader
from safehold.api.schemas import PRINTABLE, ErrorBody
from safehold.api.state import api_state
from safehold.errors import Conflict, ExitCode, NotFound, RepositoryError
from safehold.service.plans import PlanSpec
from safehold.service.restore_points import get_point, restore_request

__all__ = ["Change", "DiffOut", "FileEntry", "FileListing", "router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody},
    409: {"model": ErrorBody}, 500: {"model": ErrorBody},
}  # fmt: skip
router = APIRouter(prefix="/restore-points", tags=["restore points"], responses=_ERRORS)

CHILD_TIMEOUT = 120.0  # seconds a listing or a diff may take before it is killed
MAX_CHANGES = 1000  # changes a diff answers with (the summary counts them all)
TREE_SOURCES = ("", "directory")  # restorable in part (a folder of files)


class FileEntry(BaseModel):
    """One item of a folder in a snapshot."""

    name: str
    path: str
    type: str  # file, dir, symlink, ...
    size: int
    mtime: datetime | None


class FileListing(BaseModel):
    """A page of one folder of a restore point (``path``: ``/`` is the snapshot's root).
    ``partial``: the point's source restores in part (a folder source)."""

    point: int
    snapshot_id: str
    source_kind: str
    partial: bool
    path: str
    type: str  # of ``path`` itself: dir, or file when a file was named
    items: list[FileEntry]
    total: int
    offset: int
    next_offset: int | None


class Change(BaseModel):
    """One path that differs: ``+`` added, ``-`` removed, ``M`` content changed, ``U``
    metadata only, ``T`` type changed."""

    path: str
    change: str
    type: str
    size: int
    old_size: int | None


class DiffOut(BaseModel):
    """What changed from point ``a`` to point ``b`` (the first :data:`MAX_CHANGES`
    changes; ``summary`` counts them all)."""

    a: int
    b: int
    snapshot_a: str
    snapshot_b: str
    changes: list[Change]
    truncated: bool
    summary: dict[str, int]


async def _point(request: Request, project: str, ref: str) -> tuple[PlanSpec, str, int]:
    """The plan's spec, the snapshot and the number of the point ``ref`` of ``project``."""
    state = api_state(request)
    key, snapshot = await asyncio.to_thread(restore_request, state.engine, ref, projects=[project])
    spec = state.plans().get(key)
    if spec is None:
        raise Conflict(
            f"the plan of restore point {ref} is not in the service's configuration",
            hint="read it by hand: safehold ls SNAPSHOT / --config FILE",
        )
    point = await asyncio.to_thread(get_point, state.engine, ref, projects=[project])
    return spec, snapshot, int(point["id"])


async def read_child(spec: PlanSpec, args: list[str]) -> bytes:
    """Run ``safehold --json ARGS --config FILE`` for the plan ``spec`` and return its
    standard output; its error (``safehold: error: ...``) raised as a safehold error."""
    argv = [sys.executable, "-m", "safehold", "--json", *args, "--config", spec.config_path]
    env = {**os.environ, **(spec.env() if spec.env is not None else {})}
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, env=env,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=CHILD_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RepositoryError(
            f"reading the snapshot took more than {CHILD_TIMEOUT:.0f} s",
            hint="try a smaller folder, or run safehold ls/diff by hand",
        ) from None
    if proc.returncode != 0:
        message, hint = _error(err.decode(errors="replace"))
        if proc.returncode == ExitCode.USAGE:
            raise NotFound(message, hint=hint)
        raise RepositoryError(message, hint=hint)
    return out


def _error(stderr: str) -> tuple[str, str | None]:
    """The child's error and hint, from its ``safehold: error: ...`` lines."""
    message, hint = "", None
    for line in stderr.splitlines():
        if line.startswith("safehold: error:"):
            message = line.removeprefix("safehold: error:").strip()
        elif line.strip().startswith("hint:") and message:
            hint = line.strip().removeprefix("hint:").strip()
    return message or (stderr.strip().splitlines() or ["reading the snapshot failed"])[-1], hint


@router.get("/{ref}/files", name="list_restore_point_files")
async def list_restore_point_files(
    request: Request,
    who: Reader,
    ref: str,
    path: Annotated[str, Query(max_length=4096, pattern=PRINTABLE)] = "/",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> FileListing:
    """The files and folders of one folder of a restore point (``path``, ``/`` for the
    top), folders first then by name, a page of ``limit`` from ``offset``; a file's path
    lists that file alone. Read by a child process with the plan's configuration."""
    spec, snapshot, number = await _point(request, who.project, ref)
    path = "/" + path.strip("/") if path.strip("/") else "/"
    out = await read_child(spec, ["ls", snapshot, path])
    head: dict[str, Any] = {}
    items: list[FileEntry] = []
    own_type = "dir"
    for raw in out.splitlines():
        record = json.loads(raw)
        if record.get("struct_type") == "snapshot":
            head = record
        elif record.get("path") == path:  # the item itself
            own_type = str(record.get("type"))
            if own_type != "dir":
                items.append(_entry(record))
        else:
            items.append(_entry(record))
    items.sort(key=lambda e: (e.type != "dir", e.name))
    kind = str(head.get("source") or "")
    page = items[offset : offset + limit]
    more = offset + limit < len(items)
    return FileListing(
        point=number, snapshot_id=snapshot, source_kind=kind or "directory",
        partial=kind in TREE_SOURCES, path=path, type=own_type, items=page, total=len(items),
        offset=offset, next_offset=offset + limit if more else None,
    )  # fmt: skip


def _entry(record: dict[str, Any]) -> FileEntry:
    mtime = record.get("mtime")
    return FileEntry(
        name=str(record.get("name") or ""), path=str(record["path"]),
        type=str(record.get("type") or ""), size=int(record.get("size") or 0),
        mtime=datetime.fromisoformat(mtime.replace("Z", "+00:00")[:26] + "+00:00")
        if isinstance(mtime, str) else None,
    )  # fmt: skip


@router.get("/{ref}/diff", name="diff_restore_points")
async def diff_restore_points(
    request: Request,
    who: Reader,
    ref: str,
    against: Annotated[str, Query(min_length=1, max_length=200, pattern=PRINTABLE)],
) -> DiffOut:
    """What changed from the point ``against`` (the older) to the point ``ref``: files
    added, removed and changed. Both points must be of the same plan."""
    spec, snapshot_b, b = await _point(request, who.project, ref)
    spec_a, snapshot_a, a = await _point(request, who.project, against)
    if spec_a.key != spec.key:
        raise Conflict(
            f"restore points {against} and {ref} are of different plans",
            hint="compare two points of one plan",
        )
    found = json.loads(await read_child(spec, ["diff", snapshot_a, snapshot_b]))
    changes = [
        Change(path=c["path"], change=c["change"], type=c["type"], size=int(c["size"] or 0),
               old_size=c.get("old_size"))
        for c in found.get("changes", [])[:MAX_CHANGES]
    ]  # fmt: skip
    summary = {k: int(v) for k, v in (found.get("summary") or {}).items() if isinstance(v, int)}
    return DiffOut(
        a=a, b=b, snapshot_a=snapshot_a, snapshot_b=snapshot_b, changes=changes,
        truncated=len(found.get("changes", [])) > MAX_CHANGES, summary=summary,
    )  # fmt: skip
