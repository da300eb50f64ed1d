"""The ``workers`` table: each ``safehold serve`` process, where it runs and if it lives.

A process writes its row when it starts (:func:`register_worker`, an upsert on its name:
a restarted process with the same ``--name`` takes its row back), moves ``heartbeat_at``
every few seconds (:func:`beat`) and sets ``stopped_at`` when it stops cleanly
(:func:`stopped`). A process that was killed keeps its row with an old heartbeat:
:func:`list_workers` calls a worker alive when its heartbeat is newer than
:data:`ALIVE_SECONDS`, the same window after which procrastinate's stalled jobs of a
silent worker are reaped (jobs.STALL_SECONDS). These rows are for people
(``safehold workers``); the reaping itself reads procrastinate's own heartbeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

__all__ = ["ALIVE_SECONDS", "WorkerStatus", "beat", "list_workers", "register_worker", "stopped"]

ALIVE_SECONDS = 30.0


@dataclass(frozen=True)
class WorkerStatus:
    """One line of ``safehold workers``."""

    name: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool

    def to_json(self) -> dict[str, Any]:
        """The line as ``workers --json`` prints it."""
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "heartbeat_at": self.heartbeat_at,
            "stopped_at": self.stopped_at,
            "alive": self.alive,
        }


def register_worker(engine: Engine, name: str, host: str, pid: int) -> None:
    """Write the row of the process ``name`` as just started."""
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO workers (name, host, pid, started_at, heartbeat_at) "
                "VALUES (:n, :h, :p, now(), now()) ON CONFLICT (name) DO UPDATE SET "
                "host = excluded.host, pid = excluded.pid, started_at = now(), "
                "heartbeat_at = now(), stopped_at = NULL"
            ),
            {"n": name, "h": host, "p": pid},
        )


def beat(engine: Engine, name: str) -> None:
    """The process ``name`` is alive now."""
    with engine.begin() as db:
        db.execute(text("UPDATE workers SET heartbeat_at = now() WHERE name = :n"), {"n": name})


def stopped(engine: Engine, name: str) -> None:
    """The process ``name`` stopped cleanly."""
    with engine.begin() as db:
        db.execute(text("UPDATE workers SET stopped_at = now() WHERE name = :n"), {"n": name})


def list_workers(engine: Engine) -> list[WorkerStatus]:
    """Every process that ever served, the newest first (``alive`` by the database's clock:
    the processes' own clocks may disagree with each other)."""
    with engine.connect() as db:
        rows = db.execute(
            text(
                "SELECT name, host, pid, started_at, heartbeat_at, stopped_at, "
                "stopped_at IS NULL AND heartbeat_at > now() - :alive AS alive "
                "FROM workers ORDER BY started_at DESC, name"
            ),
            {"alive": timedelta(seconds=ALIVE_SECONDS)},
        ).all()
    return [WorkerStatus(*row) for row in rows]
