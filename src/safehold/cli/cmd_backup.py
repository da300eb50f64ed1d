"""``safehold backup``: folders and files, standard input, or a command's output."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from safehold.cli.config_run import add_config_arguments, backup_from_config
from safehold.cli.context import Context, human_bytes
from safehold.cli.progress import make_progress
from safehold.engine.backup import BackupOptions, run_backup, start_prescan
from safehold.errors import ExitCode, UsageError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "backup",
        help="back up folders, files, standard input, a command's output, or a configured "
        "source (--config FILE --source NAME)",
        description="Save a new snapshot. Files unchanged since the parent snapshot (same "
        "size, times and inode) are not read again. Unreadable files are reported, recorded "
        "in the snapshot, and make the exit code 3.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="folders and files to back up")
    p.add_argument(
        "-e",
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="skip names (PATTERN without '/') or paths (with '/') matching this glob; repeatable",
    )
    p.add_argument(
        "-x",
        "--one-file-system",
        action="store_true",
        help="do not cross into other mounted file systems",
    )
    p.add_argument("--tag", action="append", default=[], help="tag the snapshot; repeatable")
    p.add_argument("--host", help="host name to record (default: this machine's)")
    p.add_argument("--parent", metavar="SNAPSHOT", help="compare against this snapshot")
    p.add_argument("--force", action="store_true", help="read every file, changed or not")
    p.add_argument(
        "--no-xattrs",
        action="store_true",
        help="do not save extended attributes (user.*, trusted.*, security.*: file "
        "capabilities, SELinux labels); ACLs are saved unless --no-acls",
    )
    p.add_argument("--no-acls", action="store_true", help="do not save POSIX ACLs")
    p.add_argument(
        "--stdin-name",
        metavar="NAME",
        help="back up standard input (or --command's output) as the file NAME",
    )
    p.add_argument(
        "--command",
        metavar="CMD",
        help="run CMD and back up its standard output as it streams "
        "(needs --stdin-name); a non-zero exit saves no snapshot",
    )
    p.add_argument(
        "--chain-length",
        type=int,
        metavar="N",
        help="start a new chain (a full upload) after N incrementals",
    )
    p.add_argument(
        "--isolated", action="store_true", help="make a snapshot that shares no data with any other"
    )
    p.add_argument("--threads", type=int, metavar="N", help="worker threads (default: cores)")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.config:
        return backup_from_config(args, ctx)
    if args.source:
        raise UsageError("--source needs --config FILE")
    opts = BackupOptions(
        paths=args.paths,
        excludes=args.exclude,
        one_file_system=args.one_file_system,
        tags=args.tag,
        host=args.host,
        parent=args.parent,
        force=args.force,
        chain_length=args.chain_length,
        isolated=args.isolated,
        stdin_name=args.stdin_name,
        stdin=sys.stdin.buffer if args.stdin_name and not args.command else None,
        command=shlex.split(args.command) if args.command else None,
        xattrs=not args.no_xattrs,
        acls=not args.no_acls,
    )
    if args.threads:
        opts.threads = max(1, args.threads)
    # The folders are listed while the key is derived and the index loaded.
    prescan = start_prescan(opts)
    try:
        repo = ctx.open_repo()
        result = run_backup(repo, opts, make_progress(ctx.progress_enabled()), prescan=prescan)
    finally:
        if prescan is not None:
            prescan.close()
    snap, s = result.snapshot, result.summary
    if ctx.json:
        ctx.emit_json(
            {
                "snapshot": snap.id,
                "chain": snap.chain,
                "chain_seq": snap.chain_seq,
                "parent": snap.parent or None,
                "summary": s,
                "errors": [{"path": p, "error": m} for p, m in result.errors],
            }
        )
    else:
        ctx.print(
            f"files: {s['files_new']} new, {s['files_changed']} changed, "
            f"{s['files_unchanged']} unchanged"
        )
        ctx.print(
            f"added: {human_bytes(s['data_added'])} "
            f"({human_bytes(s['data_added_stored'])} stored) "
            f"of {human_bytes(s['total_bytes'])} in {s['duration_s']:.1f} s"
        )
        kind = "full" if snap.chain_seq == 0 else f"incremental {snap.chain_seq}"
        ctx.print(f"snapshot {snap.short_id} saved (chain {snap.chain[:8]}, {kind})")
        # Each unreadable item was already named once, as a warning, when it was met.
    if result.errors:
        print(
            f"safehold: {len(result.errors)} item(s) could not be read; they are listed in "
            f"snapshot {snap.short_id}",
            file=sys.stderr,
        )
        return ExitCode.PARTIAL
    return 0
