"""Verification in the catalog: the rotation of packs, and a slice's result recorded.

The rotation is ``verify_packs``: a row per pack of a repository (named by its location
without credentials, as its verify plan is), with when it was first listed and when a
slice last read it and what that found. Each slice (:mod:`.verify_slice`) lists the
repository's packs, so the rotation follows the repository: :func:`record_slice` adds
the new packs (never read: first in line), drops the packs gone (pruned), and stamps the
packs read with the time and the result. Progress therefore survives restarts and
moves between workers: it is in PostgreSQL, not in a process.

A worker runs a slice in a child process like every run (``safehold verify --config FILE
--slice-state FILE``): the worker writes the rotation and the slice's timing to a state
file (:func:`write_state`), the child reads the repository and prints its
:class:`~safehold.service.verify_slice.SliceResult`, and the worker records it. A slice
that found damage fails its run, the damaged packs and the affected snapshots named in
the run's error and in its ``params`` (``damaged_packs``, ``snapshots``).
``safehold verify --config FILE`` runs a slice in its own process instead
(:func:`run_slice_now`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

from safehold.policy.duration import parse_duration
from safehold.policy.schedule import Schedule
from safehold.repository.repository import Repository
from safehold.service.verify_slice import PackState, SliceResult, read_slice

__all__ = [
    "SliceTiming",
    "load_rotation",
    "read_state",
    "read_with_state",
    "record_slice",
    "run_slice_now",
    "slice_timing",
    "write_state",
]

DAMAGE_HINT = (
    "the snapshots named need data the damaged packs held: restore from a destination "
    "copy, or run 'safehold repair index --read-all-packs' and a new backup (docs/"
    "verification.md)"
)


@dataclass(frozen=True)
class SliceTiming:
    """What sizes a slice: the period, the interval between slices, the margin, now and
    when the next slice comes."""

    period: str  # forget's duration: "30d"
    interval: float  # seconds between two slices
    margin: float
    now: datetime
    next_slice: datetime

    def to_json(self) -> dict[str, Any]:
        """The timing as the state file holds it."""
        return {
            "period": self.period,
            "interval": self.interval,
            "margin": self.margin,
            "now": self.now.isoformat(),
            "next_slice": self.next_slice.isoformat(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SliceTiming:
        """The timing from :meth:`to_json`."""
        return cls(
            period=str(doc["period"]),
            interval=float(doc["interval"]),
            margin=float(doc["margin"]),
            now=datetime.fromisoformat(doc["now"]),
            next_slice=datetime.fromisoformat(doc["next_slice"]),
        )


def slice_timing(schedule: Schedule, period: str, margin: float, now: datetime) -> SliceTiming:
    """A slice's timing from its plan's schedule: the interval is the schedule's next gap
    (a cron schedule's gaps may differ; the next one is what this slice covers)."""
    upcoming = schedule.next_after(now)
    after = schedule.next_after(upcoming)
    return SliceTiming(
        period=period,
        interval=(after - upcoming).total_seconds(),
        margin=margin,
        now=now,
        next_slice=upcoming,
    )


def load_rotation(db: Engine | Connection, repository: str) -> list[PackState]:
    """The rotation of ``repository`` as the catalog holds it."""
    query = text(
        "SELECT pack_id, size, first_seen, last_read, last_result FROM verify_packs "
        "WHERE repository = :repo"
    )
    if isinstance(db, Engine):
        with db.connect() as conn:
            rows = conn.execute(query, {"repo": repository}).all()
    else:
        rows = db.execute(query, {"repo": repository}).all()
    return [PackState(*row) for row in rows]


def record_slice(
    engine: Engine,
    repository: str,
    result: SliceResult,
    now: datetime,
    *,
    run_id: uuid.UUID | None = None,
) -> None:
    """Make the rotation of ``repository`` follow the slice's listing and record what it
    read, in one transaction; with ``run_id``, also put the damage found in that run's
    ``params``."""
    listed = result.listed
    with engine.begin() as db:
        # Serialised per repository: two slices of one repository (the service's and a
        # 'safehold verify' by hand) must not interleave their listings.
        db.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"verify:{repository}"}
        )
        db.execute(
            text(
                """
                INSERT INTO verify_packs (repository, pack_id, size, first_seen)
                SELECT :repo, p.id, p.size, :now
                FROM unnest(CAST(:ids AS text[]), CAST(:sizes AS bigint[])) AS p(id, size)
                ON CONFLICT (repository, pack_id) DO UPDATE SET size = excluded.size
                """
            ),
            {"repo": repository, "now": now, "ids": list(listed), "sizes": list(listed.values())},
        )
        db.execute(
            text(
                "DELETE FROM verify_packs WHERE repository = :repo "
                "AND NOT (pack_id = ANY(CAST(:ids AS text[])))"
            ),
            {"repo": repository, "ids": list(listed)},
        )
        if result.read:
            db.execute(
                text(
                    """
                    UPDATE verify_packs v SET last_read = :now, last_result = r.result
                    FROM unnest(CAST(:ids AS text[]), CAST(:results AS text[]))
                         AS r(id, result)
                    WHERE v.repository = :repo AND v.pack_id = r.id
                    """
                ),
                {
                    "repo": repository,
                    "now": now,
                    "ids": list(result.read),
                    "results": list(result.read.values()),
                },
            )
        if run_id is not None:
            found = {
                "damaged_packs": result.damaged_packs,
                "snapshots": result.snapshots,
                "packs_read": len(result.read),
                "bytes_read": result.bytes_read,
            }
            db.execute(
                text("UPDATE runs SET params = params || CAST(:p AS jsonb) WHERE id = :r"),
                {"p": json.dumps(found), "r": run_id},
            )


def write_state(path: Path, timing: SliceTiming, rotation: Iterable[PackState]) -> None:
    """The state file a worker gives its child: the timing and the rotation (pack ids and
    times only: nothing secret). Private to the service's user, as its state folder is."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {**timing.to_json(), "packs": [s.to_json() for s in rotation]}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    tmp.replace(path)


def read_state(path: Path) -> tuple[SliceTiming, list[PackState]]:
    """The timing and the rotation of a state file (:func:`write_state`)."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return SliceTiming.from_json(doc), [PackState.from_json(row) for row in doc["packs"]]


def read_with_state(
    repo: Repository, timing: SliceTiming, rotation: Iterable[PackState]
) -> SliceResult:
    """Read a slice of ``repo`` as ``timing`` and ``rotation`` say (the child's part)."""
    return read_slice(
        repo,
        rotation,
        period=parse_duration(timing.period),
        interval=timing.interval,
        margin=timing.margin,
        now=timing.now,
        next_slice=timing.next_slice,
    )


def run_slice_now(
    engine: Engine, repo: Repository, repository: str, timing: SliceTiming
) -> SliceResult:
    """One slice in this process: the rotation from the catalog, the packs read, the
    result recorded (``safehold verify --config FILE``)."""
    result = read_with_state(repo, timing, load_rotation(engine, repository))
    record_slice(engine, repository, result, timing.now)
    return result
