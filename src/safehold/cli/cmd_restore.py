"""``safehold restore``: a snapshot, or parts of it, into a folder."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from safehold.cli.config_run import add_config_arguments, restore_from_config
from safehold.cli.context import Context, add_latest_filters, find_snapshot, human_bytes
from safehold.cli.progress import make_progress
from safehold.cli.selection import PATTERN_HELP, add_restore_selection
from safehold.engine.restore import RestoreOptions, RestoreResult, run_restore, selection_of
from safehold.engine.restore.folders import raise_open_files_limit
from safehold.errors import ExitCode, UsageError
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot

FIRST_SOCKETS = 10  # sockets named in the summary (all are counted)


def register(sub: Any) -> None:
    """Add ``restore`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "restore",
        help="restore a snapshot into a folder, or a configured source (--config --source)",
        description="Restore SNAPSHOT (an id prefix, or 'latest') under --target, at the "
        "paths it was taken from (/srv/db is restored as TARGET/srv/db). Every byte is "
        "verified against its id as it is written.",
        epilog=PATTERN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot id prefix or 'latest'")
    p.add_argument(
        "-t",
        "--target",
        metavar="DIR",
        help="folder to restore into (with --config: the source's restore target, e.g. a "
        "database name; a directory source needs a folder)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="with --config: allow overwriting a target that already holds data",
    )
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="with --config: parallel restore jobs where the source allows it (PostgreSQL: "
        "pg_restore --jobs, which first spools the dump to a temporary file)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be written (and the counts), writing nothing; a selection "
        "that takes nothing fails as the restore would",
    )
    p.add_argument(
        "--buffered",
        action="store_true",
        help="write through the page cache only; by default large blobs are written with "
        "direct I/O where the file system supports it (less CPU, and the data is on disk "
        "when restore ends)",
    )
    p.add_argument(
        "--no-xattrs",
        action="store_true",
        help="do not set the saved extended attributes (user.*, trusted.*, security.*); "
        "ACLs are set unless --no-acls. Attributes the kernel refuses (trusted.* and file "
        "capabilities, unless root) are named in one warning per kind; exit code 3 only "
        "if one is refused to root or by the target's file system",
    )
    p.add_argument("--no-acls", action="store_true", help="do not set the saved POSIX ACLs")
    add_restore_selection(p)
    add_latest_filters(p)
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``restore``: a snapshot into a folder, or a configured source through its own tool."""
    if args.config:
        if args.buffered:
            raise UsageError("--buffered applies to a restore into a folder, without --config")
        if args.no_xattrs or args.no_acls:
            raise UsageError(
                "--no-xattrs and --no-acls apply to a restore into a folder, without --config"
            )
        chosen = [
            flag
            for flag, given in (
                ("--exclude", args.exclude),
                ("--iinclude", args.iinclude),
                ("--iexclude", args.iexclude),
                ("--dry-run", args.dry_run),
            )
            if given
        ]
        if chosen:
            raise UsageError(
                f"{', '.join(chosen)} cannot be used with --config (it restores whole sources)"
            )
        return restore_from_config(args, ctx)
    for flag, given in (
        ("--source", args.source),
        ("--replace", args.replace),
        ("--jobs", args.jobs),
    ):
        if given:
            raise UsageError(f"{flag} needs --config FILE")
    if not args.target:
        raise UsageError("restore needs --target DIR", hint="the folder to restore into")
    opts = RestoreOptions(
        target=args.target,
        includes=args.include,
        excludes=args.exclude,
        iincludes=args.iinclude,
        iexcludes=args.iexclude,
        direct=not args.buffered,
        # Worker processes, each with its own interpreter lock (engine/restore/workers.py).
        processes=os.cpu_count() or 1,
        xattrs=not args.no_xattrs,
        acls=not args.no_acls,
    )
    selection_of(opts)  # a malformed pattern is refused before the repository is opened
    repo = ctx.open_repo()
    snap = find_snapshot(repo, args.snapshot, args)
    if args.dry_run:
        return dry_run(repo, snap, opts, ctx)
    # Restore keeps the target's folders open (engine/restore/folders.py); past the
    # descriptor limit it opens them again for every file, which is slower.
    raise_open_files_limit()
    result = run_restore(repo, snap, opts, make_progress(ctx.progress_enabled()))
    if ctx.json:
        ctx.emit_json(
            {
                "snapshot": snap.id,
                "target": args.target,
                "files": result.files,
                "dirs": result.dirs,
                "bytes": result.bytes,
                "errors": [{"path": p, "error": m} for p, m in result.errors],
                "damaged": [{"path": p, "error": m} for p, m in result.damaged],
                "attrs_not_set": [n.to_json() for n in result.attrs_not_set],
                "sockets": {
                    "count": len(result.sockets),
                    "paths": result.sockets[:FIRST_SOCKETS],
                },
            }
        )
    else:
        left = f"; {len(result.damaged)} left empty (damaged)" if result.damaged else ""
        ctx.print(
            f"restored snapshot {snap.short_id}: {result.files} files, {result.dirs} folders"
            f"{left}, {human_bytes(result.bytes)} into {args.target}"
        )
    for p, m in result.errors:
        print(f"safehold: could not restore {p}: {m}", file=sys.stderr)
    attrs_lost = _report_metadata(result)
    if result.damaged:
        # Everything else was restored; what a damaged, missing or hostile tree holds was
        # not, and nothing of it was written anywhere.
        n = len(result.damaged)
        print(
            f"safehold: error: {n} folder{'s' if n != 1 else ''} of snapshot "
            f"{snap.short_id} left empty: {'their trees are' if n != 1 else 'its tree is'} "
            "damaged, missing or hostile; everything else was restored\n"
            "  hint: run 'safehold check' to see what is damaged",
            file=sys.stderr,
        )
        return ExitCode.INTEGRITY
    return 0 if not (result.errors or attrs_lost) else ExitCode.PARTIAL


def _report_metadata(result: RestoreResult) -> bool:
    """Say what the restore left out of a complete restore of the data: sockets, and the
    extended attributes the kernel refused. True if some were refused beyond what the
    restore was expected to be refused (exit code 3): to root, or by the target's file
    system. A user who is not root cannot set trusted.* attributes or file capabilities,
    as it cannot set owners: those are named, and the exit code stays 0."""
    if result.sockets:
        n = len(result.sockets)
        shown = ", ".join(result.sockets[:FIRST_SOCKETS]) + (", ..." if n > FIRST_SOCKETS else "")
        print(
            f"safehold: note: {n} socket{'s' if n != 1 else ''} not made again (a socket is "
            f"made by the program that listens on it): {shown}",
            file=sys.stderr,
        )
    for lost in result.attrs_not_set:
        print(f"safehold: warning: {lost.describe()}", file=sys.stderr)
    if any(lost.expected for lost in result.attrs_not_set):
        print(
            "  hint: only root may set these; restore as root to keep them, or pass "
            "--no-xattrs / --no-acls not to try",
            file=sys.stderr,
        )
    return any(not lost.expected for lost in result.attrs_not_set)


def dry_run(repo: Repository, snap: Snapshot, opts: RestoreOptions, ctx: Context) -> int:
    """``restore --dry-run``: what would be written under the target, and the counts."""
    from safehold.engine.restore.preview import preview_restore

    preview = preview_restore(repo, snap, opts)
    if ctx.json:
        ctx.emit_json(
            {
                "dry_run": True,
                "snapshot": snap.id,
                "target": opts.target,
                "files": preview.files,
                "dirs": preview.dirs,
                "bytes": preview.bytes,
                "items": [{"path": i.path, "type": i.type, "size": i.size} for i in preview.items],
                "errors": [{"path": p, "error": m} for p, m in preview.errors],
                "damaged": [{"path": p, "error": m} for p, m in preview.damaged],
            }
        )
    else:
        for i in preview.items:
            ctx.print(f"{i.path}{'/' if i.type == 'dir' else ''}")
        ctx.print(
            f"would restore snapshot {snap.short_id}: {preview.files} files, {preview.dirs} "
            f"folders, {human_bytes(preview.bytes)} into {opts.target}"
        )
        ctx.print("dry run: nothing was written")
    for p, m in preview.errors:
        print(f"safehold: would not restore {p}: {m}", file=sys.stderr)
    if preview.damaged:
        return ExitCode.INTEGRITY
    return 0 if not preview.errors else ExitCode.PARTIAL
