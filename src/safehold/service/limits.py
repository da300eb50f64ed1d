"""At most N runs writing to one repository or destination at once, across every worker and
machine.

A repository's (or destination's) ``max_concurrent_jobs: N`` is a counting semaphore built
from N PostgreSQL advisory locks, ``(crc32 of the location, 0 .. N-1)``, held on a
connection of the run's own for the length of the run. A run takes the first free one
(``pg_try_advisory_lock``) or waits and tries again; the server releases a lock when its
connection ends, so a worker that dies frees its slots with it. No table, no clean-up,
nothing to leak.

A run that writes to several limited places takes a slot of each, always in the same
order (by lock key, then location): two runs can then never each hold what the other
waits for, so several limits cannot deadlock.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from safehold.storage.location import redact

__all__ = ["write_slots"]

POLL = 1.0  # seconds between two looks for a free slot
log = logging.getLogger("safehold.service")


def _key(location: str) -> int:
    """The lock's first key: the location's crc32 as a signed 32-bit integer."""
    value = zlib.crc32(location.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


async def _take(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], location: str, limit: int, what: str
) -> int:
    """Wait for one of ``limit`` slots of ``location`` on ``conn``; its number."""
    key = _key(location)
    waited = False
    while True:
        for slot in range(limit):
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (key, slot))
            row = await cur.fetchone()
            if row is not None and row[0]:
                if waited:
                    log.info("%s: a slot of %s is free; starting", what, redact(location))
                return slot
        if not waited:
            log.info(
                "%s: waiting: %d runs already write to %s (max_concurrent_jobs)",
                what, limit, redact(location),
            )  # fmt: skip
            waited = True
        await asyncio.sleep(POLL)


@asynccontextmanager
async def write_slots(
    conninfo: str | None, limits: Sequence[tuple[str, int]], *, what: str = ""
) -> AsyncIterator[list[int]]:
    """Hold a slot of each ``(location, max_concurrent_jobs)`` while the block runs (none
    given, or no database to count with: nothing is held). Yields the slots' numbers, in
    the order taken."""
    if not limits or conninfo is None:
        yield []
        return
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    try:
        taken = [
            await _take(conn, location, limit, what)
            for location, limit in sorted(limits, key=lambda item: (_key(item[0]), item[0]))
        ]
        yield taken
    finally:
        await conn.close()  # the server releases every slot with the connection
