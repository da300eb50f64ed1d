"""``safehold plan run|pause|resume NAME``: act on one plan of a running service."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database
from safehold.errors import UsageError


def register(sub: Any) -> None:
    """Add ``plan`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "plan",
        help="run a plan now, or pause and resume it",
        description="Act on one plan: 'run' queues a run now (service-backup's manual "
        "backup; a worker of 'safehold serve' runs it), 'pause' makes its slots skipped "
        "until 'resume'. NAME is the source's name, or PROJECT/NAME.",
    )
    p.add_argument("action", choices=("run", "pause", "resume"))
    p.add_argument("name", metavar="NAME")
    add_service_arguments(p, remote=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``plan``: run|pause|resume; the exit code."""
    from safehold.cli.remote import remote_from

    remote = remote_from(args)
    if remote is not None:
        return _remote(args, ctx, remote)
    from sqlalchemy import text

    from safehold.service.api_plans import listed_plans
    from safehold.service.jobs import submit
    from safehold.service.plans import plans_from_config, sync_plans

    with open_service_database(args) as (config, database):
        # The file's plans and those made through the service (which win a name clash).
        api = listed_plans(database.engine)
        specs = {**plans_from_config(config), **api}
        key = args.name if "/" in args.name else _key(args.name, specs)
        if key not in specs:
            raise UsageError(
                f"no plan {args.name!r} in {args.config}",
                hint="its plans are: " + (", ".join(sorted(specs)) or "none"),
            )
        if key not in api:
            sync_plans(database.engine, [specs[key]])
        if args.action == "run":
            run_id = submit(database.conninfo, database.engine, specs, key, kind=specs[key].kind)
            if ctx.json:
                ctx.emit_json({"plan": key, "run_id": str(run_id), "state": "queued"})
            else:
                ctx.print(f"plan {key}: run {run_id} queued")
            return 0
        project, name = key.split("/", 1)
        with database.engine.begin() as db:
            db.execute(
                text("UPDATE plans SET paused = :p WHERE project = :pr AND name = :n"),
                {"p": args.action == "pause", "pr": project, "n": name},
            )
        if ctx.json:
            ctx.emit_json({"plan": key, "paused": args.action == "pause"})
        else:
            ctx.print(f"plan {key}: {'paused' if args.action == 'pause' else 'resumed'}")
            if args.action == "resume" and specs[key].paused:
                ctx.print(f"  (the file still says paused: true for {key})")
    return 0


def _key(name: str, specs: dict[str, Any]) -> str:
    found = [key for key in specs if key.split("/", 1)[1] == name]
    if len(found) > 1:
        raise UsageError(
            f"plan name {name!r} is in several projects",
            hint="say PROJECT/NAME: " + ", ".join(found),
        )
    return found[0] if found else name


def _remote(args: argparse.Namespace, ctx: Context, remote: Any) -> int:
    """``plan run|pause|resume`` through a service's API (the token's project)."""
    project = remote.project()
    name = args.name.split("/", 1)[1] if "/" in args.name else args.name
    key = f"{project}/{name}"
    found = remote.call("POST", f"/plans/{name}/{args.action}")
    if args.action == "run":
        if ctx.json:
            ctx.emit_json({"plan": key, "run_id": found["run_id"], "state": "queued"})
        else:
            ctx.print(f"plan {key}: run {found['run_id']} queued")
        return 0
    if ctx.json:
        ctx.emit_json({"plan": key, "paused": found["paused"]})
    else:
        ctx.print(f"plan {key}: {'paused' if found['paused'] else 'resumed'}")
    return 0
