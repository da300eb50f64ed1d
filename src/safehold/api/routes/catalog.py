"""``POST /api/v1/catalog/resync``: ``safehold catalog resync`` through the API, for an
admin's project.

The repository is read in a child process per configuration (``safehold snapshots --json
--config FILE``, the plan's secrets in its environment only), as the restore points'
files are (:func:`safehold.api.routes.snapshot_files.read_child`); the API process then
makes the catalog agree with what it listed (:func:`safehold.service.resync.resync`),
for the backup plans of the token's project only.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from safehold.api.auth import Admin
from safehold.api.routes.snapshot_files import read_child
from safehold.api.schemas import ErrorBody
from safehold.api.state import api_state
from safehold.catalog import RunKind
from safehold.errors import NotFound, RepositoryError, StorageError
from safehold.service.plans import PlanSpec
from safehold.service.resync import SnapshotSeen, resync

__all__ = ["ResyncOut", "router"]

router = APIRouter(
    prefix="/catalog",
    tags=["catalog"],
    responses={status: {"model": ErrorBody} for status in (401, 403, 502)},
)


class ResyncOut(BaseModel):
    """What a resync found and did (as ``safehold catalog resync --json``)."""

    plans: list[str]
    snapshots: int
    known: int
    added: list[dict[str, Any]]
    forgotten: list[dict[str, Any]]


def _seen(record: dict[str, Any]) -> SnapshotSeen:
    chain = record.get("chain") or {}
    return SnapshotSeen(
        id=str(record["id"]),
        source_name=str(record.get("source_name", "")),
        time=datetime.fromisoformat(str(record["time"])),
        summary=dict(record.get("summary") or {}),
        chain_id=chain.get("id"),
        chain_seq=chain.get("seq"),
        isolated=bool(chain.get("isolated", False)),
    )


@router.post("/resync", name="resync_catalog")
async def resync_catalog(request: Request, who: Admin) -> ResyncOut:
    """Read the repositories of the project's backup plans and make the catalog agree: a
    snapshot no run names gets a succeeded run (trigger ``resync``); runs whose snapshot is
    gone are listed as forgotten."""
    state = api_state(request)
    mine = {
        key: spec
        for key, spec in state.plans().items()
        if spec.project == who.project and spec.kind is RunKind.BACKUP
    }
    # One listing per configuration file (the file's plans share one; an API plan has its
    # own, with its own secrets).
    by_file: dict[str, PlanSpec] = {}
    for spec in mine.values():
        by_file.setdefault(spec.config_path, spec)
    seen: list[SnapshotSeen] = []
    for spec in by_file.values():
        try:
            out = await read_child(spec, ["snapshots"])
        except (NotFound, RepositoryError) as exc:
            # The service could not read its repository (its file, its password, the
            # repository itself): a failure upstream of this request, 502.
            raise StorageError(exc.message, hint=exc.hint) from None
        seen.extend(_seen(record) for record in json.loads(out or b"[]"))
    report = await asyncio.to_thread(resync, state.engine, mine, seen)
    return ResyncOut(**report.to_json())
