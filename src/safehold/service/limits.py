"""At most N runs writing to one repository at once, across every worker and machine.

A repository's ``max_concurrent_jobs: N`` is a counting semaphore built from N PostgreSQL
advisory locks, ``(crc32 of the location, 0 .. N-1)``, held on a connection of their own
for the length of the run. A run takes the first free one (``pg_try_advisory_lock``) or
waits and tries again; the server releases a lock when its connection ends, so a worker
that dies frees its slot with it. No table, no clean-up, nothing to leak.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

__all__ = ["repository_slot"]

POLL = 1.0  # seconds between two looks for a free slot
log = logging.getLogger("safehold.service")


def _key(location: str) -> int:
    """The lock's first key: the location's crc32 as a signed 32-bit integer."""
    value = zlib.crc32(location.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


@asynccontextmanager
async def repository_slot(
    conninfo: str | None, location: str, limit: int | None, *, what: str = ""
) -> AsyncIterator[int | None]:
    """Hold one of ``limit`` slots of ``location`` while the block runs (no limit, or no
    database to count with: nothing is held). Yields the slot's number."""
    if not limit or conninfo is None:
        yield None
        return
    key = _key(location)
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    try:
        waited = False
        while True:
            for slot in range(limit):
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (key, slot))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    if waited:
                        log.info("%s: a slot of the repository is free; starting", what)
                    yield slot
                    return
            if not waited:
                log.info(
                    "%s: waiting: %d runs already write to the repository "
                    "(max_concurrent_jobs)", what, limit,
                )  # fmt: skip
                waited = True
            await asyncio.sleep(POLL)
    finally:
        await conn.close()  # the server releases the slot with the connection
