"""``safehold workers``: the ``safehold serve`` processes, and whether each is alive."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database


def register(sub: Any) -> None:
    """Add ``workers`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "workers",
        help="list the service's processes and whether each is alive",
        description="List the 'safehold serve' processes that used this catalog: name, "
        "host, process id, start, last heartbeat, and their state: alive (a heartbeat in "
        "the last 30 seconds), stopped (a clean stop), or lost (silent, never stopped).",
    )
    add_service_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``workers``: list; the exit code."""
    from safehold.service.workers import list_workers

    with open_service_database(args) as (_config, database):
        rows = list_workers(database.engine)
    if ctx.json:
        ctx.emit_json([row.to_json() for row in rows])
        return 0
    if not rows:
        ctx.print("no workers yet (start one with: safehold serve --config FILE)")
        return 0
    table = [("NAME", "HOST", "PID", "STARTED", "HEARTBEAT", "STATE")]
    for row in rows:
        state = "alive" if row.alive else "stopped" if row.stopped_at else "lost"
        table.append(
            (
                row.name,
                row.host,
                str(row.pid),
                row.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                row.heartbeat_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                state,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        ctx.print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0
