"""``safehold archive``: plain ``.tar.zst`` archives that restore without safehold.

``write`` turns a snapshot of the repository (-r) into an archive at a destination;
``list``, ``restore`` and ``forget`` work on such a destination alone (no repository, no
repository password). The layout and the encryption are in docs/storage/archive.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from safehold.app import open_storage
from safehold.archive import (
    ArchiveEntry,
    ArchiveOptions,
    find_archive,
    forget_archives,
    list_archives,
    restore_archive,
    write_archive,
)
from safehold.cli.cmd_forget import add_keep_rules, policy_from
from safehold.cli.context import Context, add_latest_filters, find_snapshot, human_bytes
from safehold.cli.context import read_password as _read_password
from safehold.clock import utcnow
from safehold.engine.restore.folders import raise_open_files_limit
from safehold.errors import ExitCode, UsageError

PASSPHRASE_ENV = "SAFEHOLD_ARCHIVE_PASSPHRASE"


def register(sub: Any) -> None:
    """Add ``archive`` and its subcommands (write, list, restore, forget) to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "archive",
        help="write, list, restore and expire plain .tar.zst archives",
        description="Plain archives: one .tar.zst per backup under PREFIX/YYYY/MM/DD/ with a "
        "sha256sum file beside it, optionally encrypted the way 'openssl enc -aes-256-cbc "
        "-pbkdf2 -iter 200000 -md sha256' does, so they restore with zstd, tar and openssl "
        "alone. See docs/storage/archive.md.",
        epilog=f"environment: {PASSPHRASE_ENV}, {PASSPHRASE_ENV}_FILE, {PASSPHRASE_ENV}_COMMAND",
    )
    actions = p.add_subparsers(dest="archive_action", metavar="ACTION", required=True)

    w = actions.add_parser(
        "write",
        help="store a snapshot as an archive",
        description="Store a snapshot of the repository (-r) as an archive at --to.",
    )
    w.add_argument("snapshot", nargs="?", default="latest", metavar="SNAPSHOT")
    w.add_argument("--to", required=True, metavar="LOCATION", help="archive destination")
    w.add_argument("--level", type=int, default=3, help="zstd level (default: 3)")
    w.add_argument("--tmpdir", help="folder for the temporary archive (default: system's)")
    add_latest_filters(w)
    _common(w, passphrase_help="encrypt with the passphrase in FILE (default: not encrypted)")
    w.set_defaults(func=run_write)

    ls = actions.add_parser("list", help="list archives", description="List complete archives.")
    ls.add_argument("location", metavar="LOCATION")
    _common(ls, passphrase=False)
    ls.set_defaults(func=run_list)

    r = actions.add_parser(
        "restore",
        help="extract an archive into a folder",
        description="Check an archive against its checksum file, then extract it into "
        "--target as GNU tar does: as root with owners, modes (set-id and sticky bits too), "
        "times, links, FIFOs and devices; as another user as that user's files, modes less "
        "the umask. Nothing is extracted from a damaged archive, nor from one with a member "
        "that would be written outside --target (an absolute name, a '..', a path through "
        "one of its symlinks): exit 4.",
    )
    r.add_argument("location", metavar="LOCATION")
    r.add_argument("archive", nargs="?", default="latest", help="latest, id prefix or name")
    r.add_argument("--target", required=True, metavar="DIR")
    r.add_argument("--tmpdir", help="folder for the downloaded archive")
    _common(r, passphrase_help="the passphrase of an encrypted archive, in FILE")
    r.set_defaults(func=run_restore)

    f = actions.add_parser(
        "forget",
        help="apply keep rules to archives",
        description="Apply keep rules to the archives of each label (source name or host) "
        "and delete the rest.",
    )
    f.add_argument("location", metavar="LOCATION")
    add_keep_rules(f)
    f.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    _common(f, passphrase=False)
    f.set_defaults(func=run_forget)


def _common(
    p: argparse.ArgumentParser, *, passphrase: bool = True, passphrase_help: str = ""
) -> None:
    p.add_argument("--prefix", default="", help="folder of the archives in the destination")
    if passphrase:
        p.add_argument("--passphrase-file", metavar="FILE", help=passphrase_help)


def _passphrase(args: argparse.Namespace, *, needed: bool) -> bytes | None:
    given = args.passphrase_file or any(
        os.environ.get(PASSPHRASE_ENV + suffix) for suffix in ("", "_FILE", "_COMMAND")
    )
    if not given and not needed:
        return None
    return _read_password(
        args.passphrase_file,
        None,
        prompt="archive passphrase",
        env=PASSPHRASE_ENV,
        flags="--passphrase-file",
    )


def _entry_json(e: ArchiveEntry) -> dict[str, Any]:
    return {
        "name": e.name,
        "time": e.time.isoformat(),
        "label": e.label,
        "snapshot": e.snapshot,
        "encrypted": e.encrypted,
        "size": e.size,
    }


def run_write(args: argparse.Namespace, ctx: Context) -> int:
    """``archive write``: one snapshot of the repository as a ``.tar.zst`` at the destination."""
    repo = ctx.open_repo()
    repo.load_index()
    snap = find_snapshot(repo, args.snapshot, args)
    opts = ArchiveOptions(
        prefix=args.prefix,
        passphrase=_passphrase(args, needed=False),
        level=args.level,
        tmpdir=args.tmpdir,
    )
    storage = open_storage(args.to, create=True)
    try:
        entry = write_archive(repo, snap, storage, opts)
    finally:
        storage.close()
    if ctx.json:
        ctx.emit_json(_entry_json(entry))
    else:
        ctx.print(f"archived snapshot {snap.short_id} as {entry.name} ({human_bytes(entry.size)})")
    return 0


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    """``archive list``: the archives stored at the destination."""
    storage = open_storage(args.location)
    try:
        entries = list_archives(storage, args.prefix)
    finally:
        storage.close()
    if ctx.json:
        ctx.emit_json([_entry_json(e) for e in entries])
        return 0
    for e in entries:
        lock = " (encrypted)" if e.encrypted else ""
        ctx.print(
            f"{e.time:%Y-%m-%d %H:%M:%S}  {e.snapshot}  {human_bytes(e.size):>10}  {e.name}{lock}"
        )
    ctx.print(f"{len(entries)} archive(s)")
    return 0


def run_restore(args: argparse.Namespace, ctx: Context) -> int:
    """``archive restore``: one archive, checked, extracted into a folder."""
    storage = open_storage(args.location)
    try:
        entry = find_archive(storage, args.prefix, args.archive)
        phrase = _passphrase(args, needed=entry.encrypted)
        # The extraction keeps the target's folders open (engine/restore/folders.py).
        raise_open_files_limit()
        result = restore_archive(storage, entry, args.target, passphrase=phrase, tmpdir=args.tmpdir)
    finally:
        storage.close()
    if ctx.json:
        ctx.emit_json(
            {
                "restored": _entry_json(entry),
                "target": args.target,
                "files": result.files,
                "dirs": result.dirs,
                "others": result.others,
                "bytes": result.bytes,
                "errors": [{"path": p, "error": m} for p, m in result.errors],
            }
        )
    else:
        ctx.print(
            f"restored {entry.name} into {args.target}: {result.files} files, "
            f"{result.dirs} folders, {result.others} others, {human_bytes(result.bytes)}"
        )
    for p, m in result.errors:
        print(f"safehold: could not restore {p}: {m}", file=sys.stderr)
    return ExitCode.PARTIAL if result.errors else 0


def run_forget(args: argparse.Namespace, ctx: Context) -> int:
    """``archive forget``: delete the archives the ``--keep-*`` rules do not keep."""
    policy = policy_from(args)
    if policy.is_empty():
        raise UsageError("no keep rule given", hint="give at least one --keep-* option")
    storage = open_storage(args.location)
    try:
        result = forget_archives(storage, args.prefix, policy, utcnow(), dry_run=args.dry_run)
    finally:
        storage.close()
    if ctx.json:
        ctx.emit_json(
            {
                "dry_run": args.dry_run,
                "keep": [
                    {**_entry_json(e), "reasons": result.reasons.get(e.id, [])} for e in result.keep
                ],
                "remove": [_entry_json(e) for e in result.remove],
            }
        )
        return 0
    for e in result.keep:
        ctx.print(f"keep    {e.name}  ({', '.join(result.reasons.get(e.id, []))})")
    for e in result.remove:
        ctx.print(f"{'would remove' if args.dry_run else 'remove'}  {e.name}")
    return 0
