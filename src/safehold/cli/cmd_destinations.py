"""``safehold destinations add|update|list|show|remove``: the service's destinations."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments
from safehold.cli.service_input import add_block_argument, add_project_argument, read_block
from safehold.errors import UsageError

_NEEDS_NAME = ("add", "update", "show", "remove")


def register(sub: Any) -> None:
    """Add ``destinations`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "destinations",
        help="add, change, list and remove the service's destinations",
        description="The places the service's API plans write to (OSB's endpoints). A "
        "destination's block is a destinations: item of a configuration file (location, "
        "password or password_env/_file/_command, options, max_concurrent_jobs, format), "
        "read from --from-file (or standard input), never from the command line. Its "
        "credentials are stored sealed with the service's key and never shown again: list "
        "and show print the name, the location without credentials, the format and the "
        "options' names. 'update' merges the keys given over the stored ones (null "
        "removes one).",
    )
    p.add_argument("action", choices=("add", "update", "list", "show", "remove"))
    p.add_argument("name", metavar="NAME", nargs="?")
    add_project_argument(p)
    add_block_argument(p, "destination's block")
    add_service_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``destinations``: the exit code."""
    from safehold.cli.service_args import open_service_vault
    from safehold.service import destinations as dest

    if args.action in _NEEDS_NAME and not args.name:
        raise UsageError(f"destinations {args.action} needs the destination's NAME")
    block = read_block(args.from_file, "destination") if args.action in ("add", "update") else {}
    with open_service_vault(args) as (database, vault):
        engine, project = database.engine, args.project
        if args.action == "list":
            views = dest.list_destinations(engine, project)
            if ctx.json:
                ctx.emit_json([v.to_json() for v in views])
            elif not views:
                ctx.print(f"no destinations in project {project}")
            for v in [] if ctx.json else views:
                ctx.print(f"{v.name}  {v.format}  {v.location}")
            return 0
        if args.action == "remove":
            dest.delete_destination(engine, project, args.name)
            if ctx.json:
                ctx.emit_json({"project": project, "name": args.name, "removed": True})
            else:
                ctx.print(f"destination {project}/{args.name} removed")
            return 0
        if args.action == "add":
            view = dest.create_destination(engine, vault, project, args.name, block)
        elif args.action == "update":
            view = dest.update_destination(engine, vault, project, args.name, block)
        else:
            view = dest.get_destination(engine, project, args.name)
    if ctx.json:
        ctx.emit_json(view.to_json())
    else:
        ctx.print(f"destination {view.project}/{view.name}")
        ctx.print(f"  location: {view.location}")
        ctx.print(f"  format:   {view.format}")
        ctx.print(f"  options:  {', '.join(view.options) or '-'}")
    return 0
