"""``safehold restore-points``: the snapshots the service's plans made, and their holds.

``restore-points`` lists them newest first, a page at a time, with their chain (the
chain's full and each point's place in it) and whether they are held;
``restore-points hold REF`` keeps one from its plan's retention until
``restore-points release REF``. REF is the point's number or its snapshot id (a prefix).
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable
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
        choices=("list", "hold", "release", "restore", "delete"),
        default="list",
        help="list (the default); hold REF: keep it whatever its plan's retention says; "
        "release REF: end the hold; restore REF: queue a restore job of it, through its "
        "source's restore path and hooks, for a worker of 'safehold serve'; delete REF: "
        "queue the forget of its snapshot (refused while held)",
    )
    p.add_argument(
        "ref", nargs="?", metavar="REF", help="the point's number or snapshot id (a prefix)"
    )
    p.add_argument("--reason", help="with hold: why it is held (shown in the list)")
    p.add_argument(
        "--target",
        metavar="TARGET",
        help="with restore: where to (a folder for a directory source, a database name for "
        "a database; default: the source's own place)",
    )
    p.add_argument(
        "--replace", action="store_true", help="with restore: allow overwriting existing data"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="with restore: wait for the job's end; the exit code is 0 only if it succeeded",
    )
    p.add_argument("--plan", metavar="NAME", help="only this plan's (NAME or PROJECT/NAME)")
    p.add_argument("--held", action="store_true", help="only the held ones")
    p.add_argument("--all", action="store_true", help="also the ones the repository no longer has")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="a page of N (default 50)")
    p.add_argument("--cursor", metavar="C", help="the page after the one that printed C")
    add_service_arguments(p, remote=True)
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
    from safehold.cli.remote import remote_from

    remote = remote_from(args)
    if remote is not None:
        return _remote(args, ctx, remote)
    with open_service_database(args) as (_config, database):
        if action == "hold":
            who = f"cli:{getpass.getuser()}"
            found = points.hold(database.engine, args.ref, by=who, reason=args.reason)
            return _done(ctx, found, "held")
        if action == "release":
            return _done(ctx, points.release(database.engine, args.ref), "released")
        if action == "restore":
            return _restore(args, ctx, _config, database)
        if action == "delete":
            return _delete(args, ctx, _config, database)
        page = points.list_points(
            database.engine,
            plan=args.plan,
            held=True if args.held else None,
            include_forgotten=args.all,
            cursor=args.cursor,
            limit=args.limit,
        )
    return _print(ctx, page.points, page.next_cursor)


def _print(ctx: Context, found: list[dict[str, Any]], next_cursor: str | None) -> int:
    if ctx.json:
        ctx.emit_json({"restore_points": found, "next_cursor": next_cursor})
        return 0
    for point in found:
        ctx.print(_line(point))
    if next_cursor:
        ctx.print(f"more: --cursor {next_cursor}")
    return 0


def _remote(args: argparse.Namespace, ctx: Context, remote: Any) -> int:
    """The same actions through a service's API (the token's project)."""
    from safehold.cli.remote import with_times

    if args.action in ("hold", "release"):
        body = {"reason": args.reason} if args.action == "hold" and args.reason else None
        found = with_times(remote.call("POST", f"/restore-points/{args.ref}/{args.action}",
                                       json=body))  # fmt: skip
        return _done(ctx, found, "held" if args.action == "hold" else "released")
    if args.action == "delete":
        queued = remote.call("DELETE", f"/restore-points/{args.ref}")
        return _deleted(ctx, args.ref, queued["run_id"])
    if args.action == "restore":
        point = remote.call("GET", f"/restore-points/{args.ref}")
        queued = remote.call("POST", f"/restore-points/{args.ref}/restore",
                             json={"target": args.target, "replace": args.replace})  # fmt: skip
        key = f"{point['project']}/{point['plan']}"
        return _restore_queued(args, ctx, key, point["snapshot_id"], queued["run_id"],
                               lambda: _remote_wait(remote, queued["run_id"]))  # fmt: skip
    params: dict[str, Any] = {"limit": args.limit, "include_forgotten": args.all}
    if args.held:
        params["held"] = True
    if args.cursor:
        params["cursor"] = args.cursor
    if args.plan:
        params["plan"] = args.plan.split("/", 1)[1] if "/" in args.plan else args.plan
    page = remote.call("GET", "/restore-points", params=params)
    return _print(ctx, [with_times(p) for p in page["items"]], page["next_cursor"])


def _remote_wait(remote: Any, run_id: str) -> dict[str, Any]:
    import time

    from safehold.cli.remote import with_times
    from safehold.service.queries import FINAL_STATES

    while True:
        run = remote.call("GET", f"/runs/{run_id}")
        if run["state"] in FINAL_STATES:
            return with_times(run)
        time.sleep(0.5)


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


def _restore(args: argparse.Namespace, ctx: Context, config: Any, database: Any) -> int:
    """Queue a restore job of the point ``args.ref``; with ``--wait``, follow it to its end."""
    from safehold.catalog import RunKind
    from safehold.service.api_plans import listed_plans
    from safehold.service.jobs import submit
    from safehold.service.plans import plans_from_config, sync_plans
    from safehold.service.queries import wait_for_run
    from safehold.service.restore_points import restore_request

    key, snapshot = restore_request(database.engine, args.ref)
    # The file's plans and those made through the service (which win a name clash).
    api = listed_plans(database.engine)
    specs = {**plans_from_config(config), **api}
    if key not in specs:
        raise UsageError(
            f"restore point {args.ref} belongs to plan {key}, which is not in {args.config}",
            hint="restore it with 'safehold restore SNAPSHOT --config FILE --source NAME'",
        )
    if key not in api:
        sync_plans(database.engine, [specs[key]])
    params = {"snapshot": snapshot, "target": args.target, "replace": args.replace}
    run_id = submit(
        database.conninfo, database.engine, specs, key, kind=RunKind.RESTORE, params=params
    )
    return _restore_queued(
        args, ctx, key, snapshot, str(run_id), lambda: wait_for_run(database.engine, run_id)
    )


def _restore_queued(
    args: argparse.Namespace,
    ctx: Context,
    key: str,
    snapshot: str,
    run_id: str,
    wait: Callable[[], dict[str, Any]],
) -> int:
    """Say that the restore job of ``snapshot`` is queued; with ``--wait``, follow it."""
    queued = {"plan": key, "snapshot": snapshot, "run_id": run_id, "state": "queued"}
    if not args.wait:
        if ctx.json:
            ctx.emit_json(queued)
        else:
            ctx.print(f"restore of {snapshot[:8]} ({key}): run {run_id} queued")
        return 0
    if not ctx.json:
        ctx.print(f"restore of {snapshot[:8]} ({key}): run {run_id} queued; waiting")
    ended = wait()
    if ctx.json:
        ctx.emit_json(ended)
    else:
        took = f" in {ended['duration_s']:.1f}s" if ended["duration_s"] is not None else ""
        ctx.print(f"run {run_id}: {ended['state']}{took}")
        if ended["error"]:
            ctx.print(f"  error: {ended['error']}")
        if ended["hint"]:
            ctx.print(f"  hint: {ended['hint']}")
    return 0 if ended["state"] == "succeeded" else 1


def _delete(args: argparse.Namespace, ctx: Context, config: Any, database: Any) -> int:
    """Queue the forget of the point's snapshot, a retention run of its plan."""
    from safehold.catalog import RunKind
    from safehold.errors import Conflict
    from safehold.service.jobs import submit
    from safehold.service.plans import plans_from_config
    from safehold.service.restore_points import get_point

    point = get_point(database.engine, args.ref)
    if point["forgotten_at"] is not None:
        raise UsageError(f"restore point {args.ref} is gone already", hint="nothing to delete")
    if point["held"]:
        raise Conflict(
            f"restore point {args.ref} is held ({point['hold_reason'] or 'no reason given'})",
            hint=f"release it first: safehold restore-points release {point['id']}",
        )
    key = f"{point['project']}/{point['plan']}"
    specs = plans_from_config(config)
    if key not in specs:
        raise UsageError(
            f"restore point {args.ref} belongs to plan {key}, which is not in {args.config}",
            hint="forget it by hand: safehold forget --config FILE SNAPSHOT",
        )
    run_id = submit(database.conninfo, database.engine, specs, key, kind=RunKind.RETENTION,
                    params={"snapshots": [point["snapshot_id"]]})  # fmt: skip
    return _deleted(ctx, args.ref, str(run_id))


def _deleted(ctx: Context, ref: str, run_id: str) -> int:
    if ctx.json:
        ctx.emit_json({"restore_point": ref, "run_id": run_id, "state": "queued"})
    else:
        ctx.print(f"restore point {ref}: its forget is queued as run {run_id}")
    return 0
