"""Restore points: the snapshots the plans made, as the catalog knows them.

A restore point is written in the same transaction as the end of the backup run that
made it (:func:`record_point`), and by ``catalog resync`` for the snapshots the service
did not make itself. It carries its chain (id, and its place in it: 0 is the chain's full
backup), and two things the repository does not know:

- a **hold**: a held point is never removed by its plan's retention (the retention job
  passes every held snapshot as ``forget --keep-id``) and cannot be deleted through the
  service until released. The hold lives in the catalog rather than as a tag on the
  snapshot because a tag rewrites the snapshot under a new id.
- **forgotten_at**: when the service learnt that the repository no longer has it (a
  retention's ``removed`` list, or a resync). Forgotten points stay listed on request: the
  run that made them did happen.

Deduplication in a chain makes each incremental share the data of the points before it,
yet any point restores on its own: the repository keeps every blob a remaining snapshot
names, whichever snapshot wrote it. Removing a chain's full therefore breaks nothing; the
chain's full is shown (``full``) because it is where an incremental's shared data came from
and what a chain's retention keeps or drops as a whole.

Listing pages through a plan's points newest first with a keyset cursor on
``(taken_at, id)``, which reads the ``(plan_id, taken_at, id)`` index alone: a page costs
the same at the millionth point as at the first.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from safehold.errors import NotFound, UsageError
from safehold.service.cursor import decode_cursor, encode_cursor, foreign_cursor

__all__ = [
    "Page",
    "get_point",
    "held_snapshots",
    "hold",
    "list_points",
    "mark_forgotten",
    "record_point",
    "release",
    "restore_request",
]

MAX_PAGE = 500


@dataclass(frozen=True)
class Page:
    """One page of restore points and the cursor of the next (None: the last page)."""

    points: list[dict[str, Any]]
    next_cursor: str | None


def record_point(
    db: Connection, run_id: uuid.UUID, record: Mapping[str, Any], *, taken_at: datetime | None
) -> None:
    """Record the point a succeeded backup run made (from its child's run record), in the
    caller's transaction; nothing if the record names no snapshot."""
    snapshot = record.get("snapshot")
    if not snapshot:
        return
    chain = record.get("chain") or {}
    db.execute(
        text(
            "INSERT INTO restore_points (plan_id, project, snapshot_id, run_id, taken_at, "
            "chain_id, chain_seq, isolated, bytes_added) "
            "SELECT r.plan_id, p.project, :snap, r.id, coalesce(:at, r.ended_at, now()), "
            ":chain, :seq, :iso, :added FROM runs r JOIN plans p ON p.id = r.plan_id "
            "WHERE r.id = :r "
            "ON CONFLICT (plan_id, snapshot_id) DO NOTHING"
        ),
        {
            "snap": snapshot,
            "at": taken_at,
            "chain": chain.get("id"),
            "seq": chain.get("seq"),
            "iso": bool(chain.get("isolated", False)),
            "added": (record.get("summary") or {}).get("data_added"),
            "r": run_id,
        },
    )


def mark_forgotten(db: Connection, plan_id: int, snapshot_ids: Iterable[str]) -> int:
    """Note that the repository no longer has these snapshots of a plan; how many points
    that changed."""
    ids = list(snapshot_ids)
    if not ids:
        return 0
    done = db.execute(
        text(
            "UPDATE restore_points SET forgotten_at = now() WHERE plan_id = :p "
            "AND snapshot_id = ANY(:ids) AND forgotten_at IS NULL"
        ),
        {"p": plan_id, "ids": ids},
    )
    return int(done.rowcount or 0)


def held_snapshots(engine: Engine, plan_key: str) -> list[str]:
    """The snapshot ids of a plan's held points (``project/name``), for its retention."""
    project, name = plan_key.split("/", 1)
    with engine.connect() as db:
        found = db.execute(
            text(
                "SELECT r.snapshot_id FROM restore_points r JOIN plans p ON p.id = r.plan_id "
                "WHERE p.project = :project AND p.name = :name AND r.held_at IS NOT NULL "
                "AND r.forgotten_at IS NULL ORDER BY r.snapshot_id"
            ),
            {"project": project, "name": name},
        )
        return list(found.scalars())


_COLUMNS = """
    r.id, r.project, p.name AS plan, r.snapshot_id, r.run_id, r.taken_at, r.chain_id,
    r.chain_seq, r.isolated, r.bytes_added, r.held_at, r.held_by, r.hold_reason,
    r.forgotten_at,
    (SELECT f.snapshot_id FROM restore_points f WHERE f.plan_id = r.plan_id
       AND f.chain_id = r.chain_id AND f.chain_seq = 0 LIMIT 1) AS full
"""


def _point(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["run_id"] = str(out["run_id"]) if out["run_id"] else None
    out["held"] = out["held_at"] is not None
    return out


def list_points(
    engine: Engine,
    *,
    projects: Iterable[str] | None = None,
    plan: str | None = None,
    held: bool | None = None,
    include_forgotten: bool = False,
    cursor: str | None = None,
    limit: int = 50,
) -> Page:
    """A page of restore points, newest first.

    ``projects`` limits them to those projects (None: all); ``plan`` is ``project/name``
    or a name in the default project; ``cursor`` is the last page's ``next_cursor``.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise UsageError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    where = ["TRUE"]
    params: dict[str, Any] = {"limit": limit + 1}
    # Each filter is on the points' own columns, so that the planner walks the one index
    # that matches (a join's condition on plans would let it pick the global one).
    if projects is not None:
        where.append("r.project = ANY(:projects)")
        params["projects"] = list(projects)
    if plan is not None:
        project, name = plan.split("/", 1) if "/" in plan else ("default", plan)
        where.append("r.plan_id = (SELECT id FROM plans WHERE project = :project AND name = :name)")
        params.update(project=project, name=name)
    if held is not None:
        where.append("r.held_at IS NOT NULL" if held else "r.held_at IS NULL")
    if not include_forgotten:
        where.append("r.forgotten_at IS NULL")
    if cursor is not None:
        after_at, key = decode_cursor(cursor)
        if not (key.isascii() and key.isdigit()):
            raise foreign_cursor()
        after_id = int(key)
        where.append("(r.taken_at, r.id) < (:after_at, :after_id)")
        params.update(after_at=after_at, after_id=after_id)
    query = text(
        f"SELECT {_COLUMNS} FROM restore_points r JOIN plans p ON p.id = r.plan_id "
        f"WHERE {' AND '.join(where)} ORDER BY r.taken_at DESC, r.id DESC LIMIT :limit"
    )
    with engine.connect() as db:
        rows = db.execute(query, params).all()
    more = len(rows) > limit
    rows = rows[:limit]
    points = [_point(row) for row in rows]
    last = rows[-1] if more else None
    return Page(points, encode_cursor(last.taken_at, str(last.id)) if last is not None else None)


def get_point(engine: Engine, ref: str, *, projects: Iterable[str] | None = None) -> dict[str, Any]:
    """The point ``ref`` names (its number or a snapshot id prefix), forgotten or not."""
    with engine.connect() as db:
        return _one(db, _find(db, ref, projects, forgotten=True))


def _find(
    db: Connection, ref: str, projects: Iterable[str] | None, *, forgotten: bool = False
) -> int:
    """The id of the one point ``ref`` names: its number, or a snapshot id (prefix)."""
    params: dict[str, Any] = {}
    scope = ""
    if projects is not None:
        scope = " AND r.project = ANY(:projects)"
        params["projects"] = list(projects)
    if ref.isascii() and ref.isdigit() and len(ref) <= 18:  # a bigint; longer: an id prefix
        query = "r.id = :id"
        params["id"] = int(ref)
    else:
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref.lower()):
            raise NotFound(
                f"{ref!r} is neither a restore point's number nor a snapshot id",
                hint="list them with 'safehold restore-points'",
            )
        query = "r.snapshot_id LIKE :prefix"
        params["prefix"] = ref.lower() + "%"
    found = db.execute(
        text(
            "SELECT r.id FROM restore_points r JOIN plans p ON p.id = r.plan_id "
            f"WHERE {query}{scope}{'' if forgotten else ' AND r.forgotten_at IS NULL'} LIMIT 2"
        ),
        params,
    ).all()
    if not found:
        raise NotFound(f"no restore point {ref}", hint="list them with 'safehold restore-points'")
    if len(found) > 1:
        raise UsageError(f"{ref!r} names more than one restore point", hint="give more digits")
    return int(found[0][0])


def _one(db: Connection, point_id: int) -> dict[str, Any]:
    row = db.execute(
        text(
            f"SELECT {_COLUMNS} FROM restore_points r JOIN plans p ON p.id = r.plan_id "
            "WHERE r.id = :id"
        ),
        {"id": point_id},
    ).one()
    return _point(row)


def restore_request(
    engine: Engine, ref: str, *, projects: Iterable[str] | None = None
) -> tuple[str, str]:
    """The plan (``project/name``) and snapshot of the point ``ref`` names: what a restore
    job of it runs. A forgotten point cannot be restored."""
    with engine.connect() as db:
        point_id = _find(db, ref, projects)
        project, name, snapshot = db.execute(
            text(
                "SELECT p.project, p.name, r.snapshot_id FROM restore_points r "
                "JOIN plans p ON p.id = r.plan_id WHERE r.id = :id"
            ),
            {"id": point_id},
        ).one()
    return f"{project}/{name}", str(snapshot)


def hold(
    engine: Engine,
    ref: str,
    *,
    by: str,
    reason: str | None = None,
    projects: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Hold the point ``ref`` names: its plan's retention keeps it until released. Holding
    a held point again changes nothing but the reason given."""
    with engine.begin() as db:
        point_id = _find(db, ref, projects)
        db.execute(
            text(
                "UPDATE restore_points SET held_at = coalesce(held_at, now()), "
                "held_by = coalesce(held_by, :by), hold_reason = coalesce(:why, hold_reason) "
                "WHERE id = :id"
            ),
            {"by": by, "why": reason, "id": point_id},
        )
        return _one(db, point_id)


def release(engine: Engine, ref: str, *, projects: Iterable[str] | None = None) -> dict[str, Any]:
    """Release the hold on the point ``ref`` names (nothing if it was not held)."""
    with engine.begin() as db:
        point_id = _find(db, ref, projects)
        db.execute(
            text(
                "UPDATE restore_points SET held_at = NULL, held_by = NULL, hold_reason = NULL "
                "WHERE id = :id"
            ),
            {"id": point_id},
        )
        return _one(db, point_id)
