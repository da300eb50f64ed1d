"""``safehold copy``: copy snapshots into another repository, re-encrypted under its key."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from safehold.app import open_repository
from safehold.cli.cmd_snapshots import add_filters, filtered
from safehold.cli.context import (
    Context,
    cache_options,
    human_bytes,
    print_warning,
    read_password,
)
from safehold.cli.progress import make_progress
from safehold.engine.maintain.copy import COPIED, SKIPPED, CopyOptions, CopyResult, copy_snapshots
from safehold.errors import (
    ExitCode,
    RepositoryNotFound,
    UsageError,
    WrongPassword,
)
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.location import redact

TO_REPOSITORY_ENV = "SAFEHOLD_TO_REPOSITORY"
TO_PASSWORD_ENV = "SAFEHOLD_TO_PASSWORD"
TO_PASSWORD_FILE_ENV = "SAFEHOLD_TO_PASSWORD_FILE"
TO_PASSWORD_COMMAND_ENV = "SAFEHOLD_TO_PASSWORD_COMMAND"


def register(sub: Any) -> None:
    """Add ``copy`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "copy",
        help="copy snapshots to another repository",
        description="Copy snapshots (default: all, or those matching the filters) from the "
        "repository (-r) into the one at --to, re-encrypted under the destination's own "
        "key. Chains keep their ids. Snapshots already copied are skipped, so an interrupted "
        "copy is resumed by running it again. Each copy is verified after it is written.",
        epilog=f"environment: {TO_REPOSITORY_ENV}, {TO_PASSWORD_ENV}, {TO_PASSWORD_FILE_ENV}, "
        f"{TO_PASSWORD_COMMAND_ENV} (the destination's location and password)",
    )
    p.add_argument(
        "snapshots", nargs="*", metavar="SNAPSHOT", help="snapshot id prefixes or 'latest'"
    )
    p.add_argument("--to", metavar="LOCATION", help="destination repository location")
    p.add_argument(
        "--to-password-file", metavar="FILE", help="read the destination's password from FILE"
    )
    p.add_argument(
        "--to-password-command",
        metavar="CMD",
        help="run CMD and use its output as the destination's password",
    )
    add_filters(p)
    p.add_argument("--threads", type=int, metavar="N", help="worker threads (default: cores)")
    p.set_defaults(func=run)


def read_to_password(password_file: str | None, password_command: str | None) -> bytes:
    """The destination's password, from its own sources only (never SAFEHOLD_PASSWORD*,
    which belong to the source repository)."""
    return read_password(
        password_file,
        password_command,
        prompt="destination repository password",
        env=TO_PASSWORD_ENV,
        flags="--to-password-file or --to-password-command",
    )


def open_destination(args: argparse.Namespace) -> Repository:
    """The destination repository of ``copy``, opened with its own password; raises
    :class:`UsageError` when none is given (``--to`` or the environment)."""
    location: str | None = args.to or os.environ.get(TO_REPOSITORY_ENV)
    if not location:
        raise UsageError(
            "no destination repository given", hint=f"use --to LOCATION or set {TO_REPOSITORY_ENV}"
        )
    password = read_to_password(args.to_password_file, args.to_password_command)
    try:
        return open_repository(location, password, on_warning=print_warning, **cache_options(args))
    except RepositoryNotFound as exc:
        raise RepositoryNotFound(
            f"destination: {exc.message}",
            hint="create it first with 'safehold -r LOCATION init', or check --to",
        ) from exc
    except WrongPassword as exc:
        raise WrongPassword(
            f"wrong password for the destination repository {redact(location)}",
            hint=f"check {TO_PASSWORD_ENV}, --to-password-file or --to-password-command",
        ) from exc


def select(src: Repository, args: argparse.Namespace) -> list[Snapshot]:
    """The snapshots to copy: those named (each once), else every one matching the filters."""
    snaps = src.list_snapshots()
    if not args.snapshots:
        return filtered(snaps, args)
    chosen = [
        src.find_snapshot(
            ref, host=args.host, paths=args.path or None, tags=args.tag or None, snapshots=snaps
        )
        for ref in args.snapshots
    ]
    return list({s.id: s for s in chosen}.values())


def result_json(r: CopyResult) -> dict[str, Any]:
    """One snapshot's outcome as ``copy --json`` prints it."""
    return {
        "source": r.source.id,
        "status": r.status,
        "target": r.target or None,
        "chain": r.source.chain,
        "chain_seq": r.source.chain_seq,
        # A skipped snapshot was verified by the run that copied it, not by this one.
        "verified": None if r.status == SKIPPED else r.status == COPIED,
        "blobs_new": r.blobs_new,
        "data_added": r.data_added,
        "data_added_stored": r.data_added_stored,
        "problems": r.problems,
    }


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``copy``: snapshots to another repository, verified; exit 4 if any copy failed."""
    src = ctx.open_repo()
    dst = open_destination(args)
    snaps = select(src, args)
    opts = CopyOptions()
    if args.threads:
        opts.threads = max(1, args.threads)
    results = copy_snapshots(src, dst, snaps, make_progress(ctx.progress_enabled()), opts=opts)
    failed = [r for r in results if not r.ok]
    if ctx.json:
        ctx.emit_json([result_json(r) for r in results])
    else:
        for r in results:
            s = r.source
            if r.status == COPIED:
                ctx.print(
                    f"copied {s.short_id} -> {r.target[:8]} (chain {s.chain[:8]}+{s.chain_seq}, "
                    f"{human_bytes(r.data_added)} added, verified)"
                )
            elif r.status == SKIPPED and not r.target:
                ctx.print(f"skipped {s.short_id}: {'; '.join(r.problems)}")
            elif r.status == SKIPPED:
                ctx.print(f"skipped {s.short_id}: already in the destination as {r.target[:8]}")
        counts = {st: sum(r.status == st for r in results) for st in (COPIED, SKIPPED)}
        ctx.print(
            f"{counts[COPIED]} copied, {counts[SKIPPED]} skipped, {len(failed)} failed "
            f"of {len(results)} snapshot(s)"
        )
    for r in failed:
        print(f"error: snapshot {r.source.short_id} was not copied:", file=sys.stderr)
        for problem in r.problems:
            print(f"  {problem}", file=sys.stderr)
    return ExitCode.INTEGRITY if failed else 0
