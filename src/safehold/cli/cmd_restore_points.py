"""``safehold restore-points``: the snapshots the service's plans made, and their holds.

``restore-points`` lists them newest first, a page at a time, with their chain (the
chain's full and each point's place in it) and whether they are held;
``restore-points hold REF`` keeps one from its plan's retention until
``restore-points release REF``. REF is the point's number or its snapshot id (a prefix).
"""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database
from safehold.errors import UsageError


def register(sub: Any) -> None:
    """Add ``restore-points`` and its actions (list, hold, release) to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "restore-points",
        help="list the plans' restore points; hold or release one",
        description="List the snapshots the service's plans made (newest first, a page "
        "at a time), or hold one so that its plan's retention keeps it, or release it. "
        "The repository stays their source of truth: 'safehold catalog resync' adds the "
        "snapshots made outside the service and notes the ones removed by hand.",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("list", "hold", "release"),
        default="list",
        help="list (the default); hold REF: keep it whatever its plan's retention says; "
        "release REF: end the hold",
    )
    p.add_argument(
        "ref", nargs="?", metavar="REF", help="the point's number or snapshot id (a prefix)"
    )
    p.add_argument("--reason", help="with hold: why it is held (shown in the list)")
    p.add_argument("--plan", metavar="NAME", help="only this plan's (NAME or PROJECT/NAME)")
    p.add_argument("--held", action="store_true", help="only the held ones")
    p.add_argument("--all", action="store_true", help="also the ones the repository no longer has")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="a page of N (default 50)")
    p.add_argument("--cursor", metavar="C", help="the page after the one that printed C")
    add_service_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``restore-points``: list, hold or release; the exit code."""
    from safehold.service import restore_points as points

    action = args.action
    if action != "list" and not args.ref:
        raise UsageError(
            f"restore-points {action} needs the point's number or snapshot id",
            hint="list them with: safehold restore-points --config FILE",
        )
    with open_service_database(args) as (_config, database):
        if action == "hold":
            who = f"cli:{getpass.getuser()}"
            found = points.hold(database.engine, args.ref, by=who, reason=args.reason)
            return _done(ctx, found, "held")
        if action == "release":
            return _done(ctx, points.release(database.engine, args.ref), "released")
        page = points.list_points(
            database.engine,
            plan=args.plan,
            held=True if args.held else None,
            include_forgotten=args.all,
            cursor=args.cursor,
            limit=args.limit,
        )
    if ctx.json:
        ctx.emit_json({"restore_points": page.points, "next_cursor": page.next_cursor})
        return 0
    for point in page.points:
        ctx.print(_line(point))
    if page.next_cursor:
        ctx.print(f"more: --cursor {page.next_cursor}")
    return 0


def _line(point: dict[str, Any]) -> str:
    seq = point["chain_seq"]
    place = "isolated" if point["isolated"] else ("-" if seq is None else
                                                  "full" if seq == 0 else f"+{seq}")  # fmt: skip
    marks = []
    if point["held"]:
        marks.append(f"held by {point['held_by']}" + (f": {point['hold_reason']}"
                                                      if point["hold_reason"] else ""))  # fmt: skip
    if point["forgotten_at"] is not None:
        marks.append(f"gone since {point['forgotten_at']:%Y-%m-%d %H:%M}")
    return (
        f"{point['id']:>6}  {point['snapshot_id'][:8]}  {point['taken_at']:%Y-%m-%d %H:%M:%S}  "
        f"{point['project'] + '/' + point['plan']:<24} {place:<8} {'; '.join(marks)}"
    ).rstrip()


def _done(ctx: Context, point: dict[str, Any], what: str) -> int:
    if ctx.json:
        ctx.emit_json(point)
    else:
        ctx.print(f"{what}: {_line(point)}")
    return 0
