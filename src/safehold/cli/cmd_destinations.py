"""``safehold destinations add|update|list|show|remove``: the service's destinations."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments
from safehold.cli.service_input import add_block_argument, add_project_argument, read_block
from safehold.errors import UsageError

if TYPE_CHECKING:
    from safehold.cli.remote import RemoteService

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
        "removes one). With --server (and a token of an admin of the project: the token "
        "decides the project), the same through the service's API.",
    )
    p.add_argument("action", choices=("add", "update", "list", "show", "remove"))
    p.add_argument("name", metavar="NAME", nargs="?")
    add_project_argument(p)
    add_block_argument(p, "destination's block")
    add_service_arguments(p, remote=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``destinations``: the exit code."""
    from safehold.cli.remote import remote_from

    if args.action in _NEEDS_NAME and not args.name:
        raise UsageError(f"destinations {args.action} needs the destination's NAME")
    block = read_block(args.from_file, "destination") if args.action in ("add", "update") else {}
    remote = remote_from(args)
    found = _remote(remote, args.action, args.name, block) if remote else _local(args, block)
    if args.action == "list":
        if ctx.json:
            ctx.emit_json(found)
        elif not found:
            where = "the token's project" if remote else f"project {args.project}"
            ctx.print(f"no destinations in {where}")
        for d in [] if ctx.json else found:
            ctx.print(f"{d['name']}  {d['format']}  {d['location']}")
    elif ctx.json:
        ctx.emit_json(found)
    elif args.action == "remove":
        ctx.print(f"destination {found['project']}/{found['name']} removed")
    else:
        ctx.print(f"destination {found['project']}/{found['name']}")
        ctx.print(f"  location: {found['location']}")
        ctx.print(f"  format:   {found['format']}")
        ctx.print(f"  options:  {', '.join(found['options']) or '-'}")
    return 0


def _local(args: argparse.Namespace, block: dict[str, Any]) -> Any:
    """The action on the service's own catalog: its JSON, as the API answers it."""
    from safehold.cli.service_args import open_service_vault
    from safehold.service import destinations as dest

    with open_service_vault(args) as (database, vault):
        engine, project, name = database.engine, args.project, args.name
        if args.action == "list":
            return [v.to_json() for v in dest.list_destinations(engine, project)]
        if args.action == "remove":
            dest.delete_destination(engine, project, name)
            return {"project": project, "name": name, "removed": True}
        if args.action == "add":
            return dest.create_destination(engine, vault, project, name, block).to_json()
        if args.action == "update":
            return dest.update_destination(engine, vault, project, name, block).to_json()
        return dest.get_destination(engine, project, name).to_json()


def _remote(remote: RemoteService, action: str, name: str | None, block: dict[str, Any]) -> Any:
    """The action through the service's API (the token decides the project)."""
    if action == "list":
        return remote.call("GET", "/destinations")
    if action == "add":
        return remote.call("POST", "/destinations", json={**block, "name": name})
    if action == "update":
        return remote.call("PATCH", f"/destinations/{name}", json=block)
    if action == "remove":
        remote.call("DELETE", f"/destinations/{name}")
        return {"project": remote.project(), "name": name, "removed": True}
    return remote.call("GET", f"/destinations/{name}")
