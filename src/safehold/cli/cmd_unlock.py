"""``safehold unlock``: remove stale locks (or, on request, every lock)."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context
from safehold.repository.lock import remove_locks


def register(sub: Any) -> None:
    """Add ``unlock`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "unlock",
        help="remove stale locks",
        description="Remove locks left by processes that are gone (not refreshed for half "
        "an hour, or held by a process of this host that no longer runs). Locks of live "
        "processes stay unless --remove-all is given.",
    )
    p.add_argument(
        "--remove-all",
        action="store_true",
        help="remove every lock, also those of running processes (only when you know "
        "none is running: prune relies on locks to know what is in use)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``unlock``: remove stale locks (all of them with ``--remove-all``)."""
    repo = ctx.open_repo()
    removed = remove_locks(repo.storage, repo.aead, all_locks=args.remove_all, clock=repo.clock)
    if ctx.json:
        ctx.emit_json({"removed": removed})
    else:
        ctx.print(f"removed {removed} {'lock' if removed == 1 else 'locks'}")
    return 0
