"""``safehold plans``: each plan's schedule, next slot, last result and RPO."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database


def register(sub: Any) -> None:
    """Add ``plans`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "plans",
        help="list the plans with their next slot, last result and RPO",
        description="List the file's plans (sources with a schedule): the schedule, the "
        "next slot, the last slot's state, the last success and the RPO (age of the newest "
        "successful backup), and how many slots were missed or failed, from the service's "
        "ledger.",
    )
    add_service_arguments(p)
    p.set_defaults(func=run)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``plans``: list; the exit code."""
    from safehold.clock import utcnow
    from safehold.service.plans import plans_from_config
    from safehold.service.queries import plan_status

    with open_service_database(args) as (config, database):
        now = utcnow()
        rows = plan_status(database.engine, plans_from_config(config), now)
    if ctx.json:
        ctx.emit_json([row.to_json(now) for row in rows])
        return 0
    if not rows:
        ctx.print(f"no plans in {args.config} (give a source a schedule:)")
        return 0
    table = [("PLAN", "SCHEDULE", "NEXT", "LAST", "LAST SUCCESS", "RPO", "MISSED", "FAILED")]
    for row in rows:
        table.append(
            (
                row.key + (" (paused)" if row.paused else ""),
                row.schedule,
                _when(row.next_slot),
                row.last_state or "-",
                _when(row.last_success),
                _age(row.rpo_seconds(now)),
                str(row.missed),
                str(row.failed),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        ctx.print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0
