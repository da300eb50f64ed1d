"""``safehold backup``: folders and files, standard input, or a command's output."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from safehold.cli.config_run import add_config_arguments, backup_from_config
from safehold.cli.context import Context, human_bytes
from safehold.cli.progress import make_progress
from safehold.cli.selection import (
    PATTERN_HELP,
    add_backup_selection,
    backup_selection_given,
    exclude_patterns,
    files_from,
)
from safehold.engine.backup import CHANGED_WHILE_READ, BackupOptions, run_backup, start_prescan
from safehold.errors import ExitCode, UsageError

COMMAND_HELP = """
--command runs one program with its arguments, without a shell (as exec does): quotes
group words, but '|', '>', ';', '&&' and $VARS are passed to the program as they are.
For a pipeline, give the shell yourself (with bash -o pipefail -c '...', a failure of any
command of the pipeline, not only the last, fails the backup):
  safehold backup --stdin-name db.sql.zst --command "sh -c 'pg_dump mydb | zstd'"
"""


def register(sub: Any) -> None:
    """Add ``backup`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "backup",
        help="back up folders, files, standard input, a command's output, or a configured "
        "source (--config FILE --source NAME)",
        description="Save a new snapshot. Files unchanged since the parent snapshot (same "
        "size, times and inode) are not read again. Unreadable files are reported, recorded "
        "in the snapshot, and make the exit code 3.",
        epilog=PATTERN_HELP + COMMAND_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="folders and files to back up")
    p.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="show what would be saved (each item: new, changed or unchanged; counts and "
        "sizes), reading no file and writing nothing to the repository",
    )
    p.add_argument(
        "-x",
        "--one-file-system",
        action="store_true",
        help="do not cross into other mounted file systems",
    )
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG[,TAG...]",
        help="tag the snapshot; repeatable, or several at once separated by commas (as "
        "restic, and as 'safehold tag' and 'forget --keep-tag' read them)",
    )
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
        help="run CMD and back up its standard output as it streams (needs "
        "--stdin-name); CMD is split into arguments like a shell would, but not run by "
        "one: for pipes, redirections or $VARS give \"sh -c '...'\"; a non-zero exit "
        "saves no snapshot",
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
    add_backup_selection(p)
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``backup``: paths, a stream or a configured source into a new snapshot; returns the exit
    code (3 when some files could not be read)."""
    if args.config:
        given = [*backup_selection_given(args), *(["--dry-run"] if args.dry_run else [])]
        if given:
            raise UsageError(
                f"{', '.join(given)} cannot be used with --config",
                hint="set what to leave out in the source's block (docs/sources/directory.md)",
            )
        return backup_from_config(args, ctx)
    if args.source:
        raise UsageError("--source needs --config FILE")
    listed = files_from(args)
    if (args.stdin_name or args.command) and listed:
        raise UsageError("--files-from and its kin list paths; they cannot go with --stdin-name")
    opts = BackupOptions(
        paths=[*listed, *args.paths],
        excludes=[*args.exclude, *exclude_patterns(args.exclude_file, "--exclude-file")],
        iexcludes=[*args.iexclude, *exclude_patterns(args.iexclude_file, "--iexclude-file")],
        exclude_if_present=args.exclude_if_present,
        exclude_caches=args.exclude_caches,
        exclude_larger_than=args.exclude_larger_than,
        one_file_system=args.one_file_system,
        tags=[t.strip() for spec in args.tag for t in spec.split(",") if t.strip()],
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
    if args.dry_run:
        return dry_run(opts, ctx)
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
        print(f"safehold: {_errors_line(result.errors)}; snapshot {snap.short_id}", file=sys.stderr)
        return ExitCode.PARTIAL
    return 0


def _errors_line(errors: list[tuple[str, str]]) -> str:
    """The exit-3 line: how many items were not read and how many changed while read (those
    are stored as read, perhaps torn), both listed in the snapshot's errors."""
    changed = sum(1 for _, why in errors if why == CHANGED_WHILE_READ)
    parts = []
    if len(errors) > changed:
        parts.append(f"{len(errors) - changed} item(s) could not be read")
    if changed:
        parts.append(f"{changed} file(s) changed while read and may be inconsistent")
    return ", ".join(parts) + "; they are listed in the snapshot's errors"


def dry_run(opts: BackupOptions, ctx: Context) -> int:
    """``backup --dry-run``: every item the backup would save, and the totals."""
    from safehold.engine.backup.preview import preview_backup

    prescan = start_prescan(opts)
    try:
        repo = ctx.open_repo()
        preview = preview_backup(repo, opts, make_progress(ctx.progress_enabled()), prescan=prescan)
    finally:
        if prescan is not None:
            prescan.close()
    s = preview.summary
    if ctx.json:
        ctx.emit_json(
            {
                "dry_run": True,
                "parent": preview.parent,
                "summary": s,
                "items": [
                    {"path": i.path, "type": i.type, "status": i.status, "size": i.size}
                    for i in preview.items
                ],
                "errors": [{"path": p, "error": m} for p, m in preview.errors],
            }
        )
    else:
        for i in preview.items:
            ctx.print(f"{i.status:<9} {i.path}{'/' if i.type == 'dir' else ''}")
        ctx.print(
            f"would save: {s['files_new']} new, {s['files_changed']} changed and "
            f"{s['files_unchanged']} unchanged files in {s['dirs']} folders, "
            f"{human_bytes(s['total_bytes'])}; would read {human_bytes(s['bytes_to_read'])}"
        )
        ctx.print("dry run: nothing was read or written")
    if preview.errors:
        print(
            f"safehold: {len(preview.errors)} item(s) could not be listed; a backup would "
            "record them as unreadable",
            file=sys.stderr,
        )
        return ExitCode.PARTIAL
    return 0
