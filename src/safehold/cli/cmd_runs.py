"""``safehold runs``: the service's runs, newest first; ``runs show ID``: one of them."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database
from safehold.errors import UsageError

_STATES = ("queued", "running", "succeeded", "failed", "timed_out", "skipped", "worker_lost",
           "cancelled")  # fmt: skip


def register(sub: Any) -> None:
    """Add ``runs`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "runs",
        aliases=["jobs"],  # the OSB backup manager's name: backup jobs and restore jobs
        help="list the service's runs (alias: jobs), or show one",
        description="List the runs the service made, newest first ('runs'), or show one "
        "with its phases, hook output and log lines ('runs show ID'; a unique prefix of "
        "the id is enough).",
    )
    p.add_argument("show", nargs="?", choices=("show",), help=argparse.SUPPRESS)
    p.add_argument("run_id", nargs="?", metavar="ID", help="with 'show': the run to show")
    p.add_argument("--plan", metavar="NAME", help="only this plan's runs (NAME or PROJECT/NAME)")
    p.add_argument("--state", choices=_STATES, help="only runs in this state")
    p.add_argument(
        "--kind",
        choices=("backup", "restore", "retention", "prune", "verify", "drill"),
        help="only runs of this kind (the OSB backup manager's backup and restore jobs)",
    )
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default 50)")
    add_service_arguments(p, remote=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``runs``: list or show; the exit code."""
    from safehold.service.queries import run_detail, runs_list

    if args.show and not args.run_id:
        raise UsageError("runs show needs a run id", hint="list them with: safehold runs")
    from safehold.cli.remote import remote_from

    remote = remote_from(args)
    if remote is not None:
        if args.show:
            return _show(_remote_run(remote, args.run_id), ctx)
        return _print(_remote_runs(remote, args), ctx)
    with open_service_database(args) as (_config, database):
        if args.show:
            found = run_detail(database.engine, args.run_id)
            if found is None:
                raise UsageError(
                    f"no run {args.run_id!r} (or the prefix is not unique)",
                    hint="list them with: safehold runs --config FILE",
                )
            return _show(found, ctx)
        rows = runs_list(
            database.engine, plan=args.plan, state=args.state, kind=args.kind, limit=args.limit
        )
    return _print(rows, ctx)


def _remote_runs(remote: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs as the local catalog lists them, from the service's API."""
    from safehold.cli.remote import with_times

    project = remote.project()
    params = {"limit": min(max(args.limit, 1), 500)}
    for name in ("state", "kind"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    if args.plan:
        params["plan"] = args.plan.split("/", 1)[1] if "/" in args.plan else args.plan
    rows = remote.call("GET", "/runs", params=params)["items"]
    return [with_times({**row, "plan": f"{project}/{row['plan']}"}) for row in rows]


def _remote_run(remote: Any, ref: str) -> dict[str, Any]:
    """One run (a unique prefix of its id is enough, among the newest 500)."""
    from safehold.cli.remote import with_times

    found = [r["id"] for r in remote.call("GET", "/runs", params={"limit": 500})["items"]
             if r["id"].startswith(ref.lower())]  # fmt: skip
    if len(found) != 1:
        raise UsageError(f"no run {ref!r} (or the prefix is not unique)",
                         hint="list them with: safehold runs --server URL")  # fmt: skip
    run = with_times(remote.call("GET", f"/runs/{found[0]}"))
    run["plan"] = f"{remote.project()}/{run['plan']}"
    run["lines"] = [with_times(line) for line in run.get("lines") or []]
    return run


def _print(rows: list[dict[str, Any]], ctx: Context) -> int:
    if ctx.json:
        ctx.emit_json(rows)
        return 0
    for row in rows:
        when = row["started_at"] or row["queued_at"]
        took = f"{row['duration_s']:.1f}s" if row["duration_s"] is not None else "-"
        snap = (row["snapshot_id"] or "")[:8] or "-"
        ctx.print(
            f"{row['id'][:8]}  {when:%Y-%m-%d %H:%M:%S}  {row['plan']:<24} {row['kind']:<9} "
            f"{row['state']:<11} {row['trigger']:<9} {took:>8}  {snap}  "
            f"{row['error'] or row['reason'] or ''}".rstrip()
        )
    return 0


def _show(run: dict[str, Any], ctx: Context) -> int:
    if ctx.json:
        ctx.emit_json(run)
        return 0
    for key in ("id", "plan", "kind", "trigger", "attempt", "state", "worker", "slot_at",
                "queued_at", "started_at", "ended_at", "duration_s", "snapshot_id",
                "bytes_read", "bytes_added", "reason", "error", "hint"):  # fmt: skip
        if run.get(key) not in (None, ""):
            ctx.print(f"{key + ':':<12} {run[key]}")
    for phase in run.get("phases") or []:
        ctx.print(f"phase {phase.get('phase')}: {phase.get('outcome') or phase.get('state')}")
        for line in str(phase.get("output") or phase.get("stderr") or "").splitlines()[-10:]:
            ctx.print(f"    | {line}")
    if run["lines"]:
        ctx.print("log:")
    for line in run["lines"]:
        ctx.print(f"  {line['at']:%H:%M:%S} {line['level']:<7} {line['message']}")
    return 0
