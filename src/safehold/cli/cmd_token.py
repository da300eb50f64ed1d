"""``safehold token create|list|revoke``: the REST API's bearer tokens, in the catalog the
configuration file names (docs/api.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database


def register(sub: Any) -> None:
    """Add ``token`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "token",
        help="make, list or revoke the REST API's tokens",
        description="Tokens for the REST API of 'safehold serve'. 'create' prints the new "
        "token alone on standard output, this once: only its hash is kept. Each token "
        "belongs to one project and sees nothing of any other.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a token; print it alone on stdout")
    create.add_argument("--project", required=True, help="the project it may see")
    create.add_argument(
        "--role",
        required=True,
        choices=("admin", "operator", "viewer", "agent"),
        help="admin: everything in the project; operator: read, run, pause, resume, cancel; "
        "viewer: read; agent: its own jobs",
    )
    create.add_argument("--name", default="", help="what it is for (shown by 'token list')")
    add_service_arguments(create)
    listing = actions.add_parser("list", help="list the tokens (never their secrets)")
    listing.add_argument("--project", help="only this project's")
    add_service_arguments(listing)
    revoke = actions.add_parser("revoke", help="revoke a token: it stops working at once")
    revoke.add_argument("token_id", metavar="ID", help="the token's id (from 'token list')")
    add_service_arguments(revoke)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``token``: create, list or revoke; the exit code."""
    from safehold.api.tokens import create_token, list_tokens, revoke_token

    with open_service_database(args) as (_config, database):
        if args.action == "create":
            made = create_token(
                database.engine, project=args.project, role=args.role, name=args.name
            )
            if ctx.json:
                ctx.emit_json({**made.info.to_json(), "token": made.token})
            else:
                # Alone on stdout, even with --quiet: a script captures it with $(...).
                sys.stdout.write(made.token + "\n")
            return 0
        if args.action == "revoke":
            info = revoke_token(database.engine, args.token_id)
            if ctx.json:
                ctx.emit_json(info.to_json())
            else:
                ctx.print(f"token {info.id} revoked ({info.project}, {info.role})")
            return 0
        found = list_tokens(database.engine, project=args.project)
    if ctx.json:
        ctx.emit_json([info.to_json() for info in found])
        return 0
    for info in found:
        state = f"revoked {info.revoked_at:%Y-%m-%d %H:%M}" if info.revoked_at else "active"
        used = f"{info.last_used_at:%Y-%m-%d %H:%M}" if info.last_used_at else "never"
        ctx.print(
            f"{info.id}  {info.project:<16} {info.role:<8} {state:<22} used {used:<16} "
            f"{info.name}".rstrip()
        )
    return 0
