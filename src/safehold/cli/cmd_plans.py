"""``safehold plans``: each plan's schedule, next slot, last result and RPO; and
``plans create|update|delete|show NAME`` for the plans made through the service."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING, Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database
from safehold.cli.service_input import add_block_argument, add_project_argument, read_block
from safehold.errors import UsageError

if TYPE_CHECKING:
    from safehold.cli.remote import RemoteService
    from safehold.service.queries import PlanStatus


def register(sub: Any) -> None:
    """Add ``plans`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "plans",
        help="list the plans with their next slot, last result and RPO",
        description="List the file's plans (sources with a schedule): the schedule, the "
        "next slot, the last slot's state, the last success and the RPO (age of the newest "
        "successful backup), and how many slots were missed or failed, from the service's "
        "ledger. 'create', 'update' and 'delete' manage the plans made through the "
        "service (not the file's, which are read-only there): the plan's block, read from "
        "--from-file (or standard input), is a source block as in the file's sources: plus "
        "'repository: DEST' (a destination of the project, see 'safehold destinations') and "
        "optionally 'copies: [DEST, ...]'. 'show' prints one plan of either origin. With "
        "--server, all of it through the service's API (the token decides the project; "
        "create, update, delete and show need an admin's).",
    )
    p.add_argument("action", nargs="?", choices=("create", "update", "delete", "show"))
    p.add_argument("name", metavar="NAME", nargs="?")
    add_project_argument(p)
    add_block_argument(p, "plan's block")
    add_service_arguments(p, remote=True)
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
    """``plans``: list, or act on one API plan; the exit code."""
    from safehold.cli.remote import remote_from

    remote = remote_from(args)
    if args.action is not None:
        return _act(args, ctx, remote)
    from safehold.clock import utcnow

    now = utcnow()
    rows = _remote_rows(remote) if remote is not None else _local_rows(args, now)
    if ctx.json:
        ctx.emit_json([row.to_json(now) for row in rows])
        return 0
    if not rows:
        ctx.print(f"no plans in {args.config or args.server} (give a source a schedule:)")
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


def _local_rows(args: argparse.Namespace, now: datetime) -> list[PlanStatus]:
    from safehold.service.api_plans import listed_plans
    from safehold.service.plans import plans_from_config
    from safehold.service.queries import plan_status

    with open_service_database(args) as (config, database):
        # The file's plans and those made through the service (which win a name clash).
        specs = {**plans_from_config(config), **listed_plans(database.engine)}
        return plan_status(database.engine, specs, now)


def _remote_rows(remote: Any) -> list[PlanStatus]:
    from safehold.cli.remote import with_times
    from safehold.service.queries import PlanStatus

    rows = []
    for plan in remote.call("GET", "/plans"):
        found = with_times(plan)
        rows.append(
            PlanStatus(
                key=f"{found['project']}/{found['name']}",
                schedule=found["schedule"],
                paused=found["paused"],
                next_slot=found["next_slot"],
                last_state=found["last_state"],
                last_slot=found["last_slot"],
                last_success=found["last_success"],
                missed=found["missed"],
                failed=found["failed"],
            )
        )
    return rows


def _act(args: argparse.Namespace, ctx: Context, remote: RemoteService | None) -> int:
    """``plans create|update|delete|show NAME``."""
    if not args.name:
        raise UsageError(f"plans {args.action} needs the plan's NAME")
    changes = args.action in ("create", "update")
    block = read_block(args.from_file, "plan") if changes else {}
    if remote is not None:
        found = _remote_act(remote, args.action, args.name, block)
    else:
        found = _local_act(args, block)
    if ctx.json:
        ctx.emit_json(found)
        return 0
    if args.action == "delete":
        ctx.print(f"plan {found['project']}/{found['name']} deleted")
        return 0
    ctx.print(f"plan {found['project']}/{found['name']} ({found['origin']})")
    paused = " paused" if found["paused"] else ""
    ctx.print(f"  schedule:   {found['schedule']} ({found['timezone']}){paused}")
    if found["repository"] is not None:
        ctx.print(f"  repository: {found['repository']}")
        ctx.print(f"  copies:     {', '.join(found['copies']) or '-'}")
    if changes:
        ctx.print("  a running service takes it within a few seconds")
    return 0


def _local_act(args: argparse.Namespace, block: dict[str, Any]) -> dict[str, Any]:
    """The action on the service's own catalog: its JSON, as the API answers it."""
    from safehold.cli.service_args import open_service_vault
    from safehold.service import api_plans

    with open_service_vault(args) as (database, vault):
        engine, project, name = database.engine, args.project, args.name
        if args.action == "delete":
            api_plans.delete_plan(engine, project, name)
            return {"project": project, "name": name, "deleted": True}
        if args.action == "create":
            return api_plans.create_plan(engine, vault, project, name, block).to_json()
        if args.action == "update":
            return api_plans.update_plan(engine, vault, project, name, block).to_json()
        return api_plans.get_plan(engine, project, name).to_json()


def _remote_act(
    remote: RemoteService, action: str, name: str, block: dict[str, Any]
) -> dict[str, Any]:
    """The action through the service's API (an admin's token; it decides the project)."""
    if action == "delete":
        remote.call("DELETE", f"/plans/{name}")
        return {"project": remote.project(), "name": name, "deleted": True}
    if action == "create":
        return dict(remote.call("POST", "/plans", json={**block, "name": name}))
    if action == "update":
        return dict(remote.call("PUT", f"/plans/{name}", json={**block, "name": name}))
    return dict(remote.call("GET", f"/plans/{name}/definition"))
