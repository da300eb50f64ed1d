"""``safehold drills``: the drills recorded in the service's catalog, newest first, each
with its restore time (RTO) against its target and its plan's trend."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database


def register(sub: Any) -> None:
    """Add ``drills`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "drills",
        help="list restore drills with their restore time (RTO) and trend",
        description="List the drills the service and 'safehold drill' recorded, newest "
        "first: the snapshot proven, the restore time against the drill's rto_target, the "
        "result (and the phase a failed one stopped in), and the trend of the plan's last "
        "restore times (better or worse than the drill before).",
    )
    p.add_argument("--plan", metavar="NAME", help="only this plan's drills (NAME or PROJECT/NAME)")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default 50)")
    add_service_arguments(p)
    p.set_defaults(func=run)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}m"


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``drills``: list them; exit 0."""
    from safehold.service.drills import drills_list

    with open_service_database(args) as (_config, database):
        rows = drills_list(database.engine, plan=args.plan, limit=args.limit)
    if ctx.json:
        ctx.emit_json(rows)
        return 0
    if not rows:
        ctx.print("no drills recorded" + (f" for plan {args.plan}" if args.plan else ""))
        return 0
    for row in rows:
        result = row["result"]
        if result == "failed" and row["failed_phase"]:
            result = f"failed:{row['failed_phase']}"
        rto = _seconds(row["restore_seconds"])
        if row["rto_target_seconds"] is not None:
            mark = " OVER" if row["over_target"] else ""
            rto += f"/{_seconds(row['rto_target_seconds'])}{mark}"
        trend = " ".join(_seconds(x) for x in row["rtos"])
        if row["trend"]:
            trend += f" ({row['trend']})"
        ctx.print(
            f"{row['started_at']:%Y-%m-%d %H:%M:%S}  {row['project']}/{row['plan']:<20} "
            f"{(row['snapshot_id'] or '-')[:8]:<8}  {result:<15} RTO {rto:<18} "
            f"trend {trend}  {row['error'] or ''}".rstrip()
        )
    return 0
