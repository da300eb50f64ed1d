"""``safehold mount``: browse the snapshots as a read-only file system (FUSE)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from safehold.cli.context import Context, print_warning
from safehold.engine.inspect.mount import MountOptions, check_fuse, serve
from safehold.engine.inspect.mount_view import MountView
from safehold.errors import ExitCode

EPILOG = """\
layout (as restic's):
  ids/<short id>/...          each snapshot by id
  snapshots/<time>/...        each snapshot by time; snapshots/latest is the newest
  hosts/<host>/<time>/...     per host, with latest
  tags/<tag>/<time>/...       per tag, with latest
Inside a snapshot, the backed-up paths are at their absolute positions. Files are read and
verified as they are opened, so copying one out ('cp', 'rsync') is a quick restore of it.

The command stays in the foreground until the file system is unmounted ('fusermount -u
MOUNTPOINT' or 'umount MOUNTPOINT') or interrupted (Ctrl-C unmounts). While it runs, it
holds a shared lock: backups, restores and copies go on, new snapshots appear within
30 seconds, and prune frees space only once it is unmounted. Needs FUSE (/dev/fuse and
libfuse, Debian package fuse3); without it, the error says what is missing (exit 2).
"""


def register(sub: Any) -> None:
    """Add ``mount`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "mount",
        help="browse the snapshots as a read-only file system (FUSE)",
        description="Mount the repository's snapshots read-only at MOUNTPOINT (an existing "
        "folder), by id, time, host and tag, until unmounted.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty folder")
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users in too (the stored modes and owners still decide what each "
        "may read; non-root users need user_allow_other in /etc/fuse.conf)",
    )
    p.add_argument("--debug", action="store_true", help="trace every FUSE call on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``mount``: the snapshots as a read-only file system until unmounted or interrupted."""
    check_fuse(args.mountpoint)  # before asking for a password
    repo = ctx.open_repo()
    errors: list[tuple[str, str]] = []

    def ready(view: MountView) -> None:
        count = len(view.snapshots)
        if ctx.json:
            line = {"mounted": args.mountpoint, "snapshots": count}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        else:
            ctx.print(
                f"{count} snapshot(s) mounted read-only at {args.mountpoint}; unmount with "
                f"'fusermount -u {shlex.quote(args.mountpoint)}' or Ctrl-C"
            )
            sys.stdout.flush()

    def damaged(what: str, why: str) -> None:
        errors.append((what, why))
        print_warning(what, f"cannot be read: {why}")

    opts = MountOptions(allow_other=args.allow_other, debug=args.debug)
    serve(repo, args.mountpoint, opts, on_ready=ready, on_error=damaged)
    if ctx.json:
        line = {
            "unmounted": args.mountpoint,
            "errors": [{"path": p, "error": e} for p, e in errors],
        }
        sys.stdout.write(json.dumps(line) + "\n")
    else:
        ctx.print(f"unmounted {args.mountpoint}")
    # Damage met while browsing is damage (exit 4), as in any other reader.
    return ExitCode.INTEGRITY if errors else ExitCode.OK
