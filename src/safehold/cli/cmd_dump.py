"""``safehold dump``: a file's bytes, or a folder as a tar stream, to standard output."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import IO, Any

from safehold.cli.context import Context, add_latest_filters, find_snapshot, human_bytes
from safehold.engine.export import DumpResult, dump
from safehold.errors import ExitCode, TargetError, UsageError


def register(sub: Any) -> None:
    """Add ``dump`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "dump",
        help="write a file, or a folder as a tar archive, to standard output",
        description="Write PATH from SNAPSHOT (an id prefix, or 'latest') to standard output "
        "or --output: a file as its bytes; a folder (or the whole snapshot, without PATH) as "
        "a PAX tar archive keeping modes, owners, times, symlinks and hard links, with names "
        "as in the snapshot ('/srv/db/x' as 'srv/db/x'). Data is streamed and every blob is "
        "verified as it is read. Example: safehold dump latest /srv/db | tar -x -C /tmp/x",
    )
    p.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot id prefix or 'latest'")
    p.add_argument("path", nargs="?", default="/", metavar="PATH", help="path in the snapshot")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE instead of standard output"
    )
    p.add_argument(
        "--archive",
        choices=["tar", "zip"],
        default="tar",
        help="archive format for folders: tar (default; keeps everything) or zip (keeps "
        "modes, symlinks and times to the second; no owners, FIFOs or devices)",
    )
    add_latest_filters(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``dump``: a file's bytes, or a folder as tar or zip, to standard output or ``--output``;
    refuses to write to a terminal."""
    if not args.output and sys.stdout.isatty():
        raise UsageError(
            "refusing to write binary data to a terminal",
            hint="redirect standard output (| tar -x, > file) or use --output FILE",
        )
    repo = ctx.open_repo()
    with repo.lock("read"):
        repo.load_index()
        snap = find_snapshot(repo, args.snapshot, args)
        if args.output:
            result = _to_file(
                args.output, lambda f: dump(repo, snap, args.path, f, archive=args.archive)
            )
        else:
            sys.stdout.flush()
            result = dump(repo, snap, args.path, sys.stdout.buffer, archive=args.archive)
            sys.stdout.buffer.flush()
    for path, why in result.skipped:
        print(f"warning: {path} left out: {why}", file=sys.stderr)
    if args.output and not ctx.quiet:
        what = f"{result.kind} archive of " if result.kind != "file" else ""
        print(
            f"wrote {what}{result.path} from snapshot {snap.short_id} to {args.output} "
            f"({result.files} files, {human_bytes(result.bytes)})",
            file=sys.stderr,
        )
    return ExitCode.PARTIAL if result.skipped else 0


def _to_file(path: str, write: Callable[[IO[bytes]], DumpResult]) -> DumpResult:
    """Run ``write`` on a new file at ``path``; remove the file if the dump fails, so that
    no partial file is left looking complete."""
    try:
        f = open(path, "wb")  # noqa: SIM115 (closed below; a failed open removes nothing)
    except OSError as exc:
        raise TargetError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        with f:
            return write(f)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        if isinstance(exc, OSError):
            raise TargetError(f"cannot write {path}: {exc.strerror}") from exc
        raise
