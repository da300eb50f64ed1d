"""``safehold tag``: add, remove or set the tags of snapshots."""

from __future__ import annotations

import argparse
import os
from typing import Any

from safehold.cli.cmd_snapshots import snapshot_json
from safehold.cli.context import Context
from safehold.engine.maintain.tag import TagOptions, run_tag
from safehold.errors import StoragePermissionDenied

EPILOG = """\
A snapshot is stored under the hash of its content, so a snapshot whose tags change gets a
new id: the new snapshot is written first, then the old one is deleted (the new one names
it in its 'original' field, which 'copy' also reads). If tag is interrupted between the
two, both are listed, with the same data; running the same command again finishes it.

examples:
  safehold tag --add keep-forever 1a2b3c4d
  safehold tag --remove nightly --host db1          # every snapshot of host db1
  safehold tag --set weekly,verified latest
  safehold tag --set '' 1a2b3c4d                    # remove every tag
"""


def _tag_list(text: str) -> list[str]:
    return [t for t in text.split(",") if t] if text else []


def register(sub: Any) -> None:
    """Add ``tag`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "tag",
        help="add, remove or set the tags of snapshots",
        description="Change the tags of the SNAPSHOTs named (id prefixes or 'latest'), or "
        "without any, of every snapshot the filters choose (all of them without filters, "
        "as restic does).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="snapshot id or 'latest'")
    g = p.add_argument_group("changes (TAGS: one tag, or several separated by commas)")
    g.add_argument(
        "--add", action="append", default=[], metavar="TAGS", help="add these tags; repeatable"
    )
    g.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="TAGS",
        help="remove these tags; repeatable",
    )
    g.add_argument(
        "--set",
        action="append",
        metavar="TAGS",
        help="replace every tag with these ('' for none); repeatable",
    )
    f = p.add_argument_group("which snapshots")
    f.add_argument("--host", help="only snapshots of this host")
    f.add_argument("--tag", action="append", default=[], help="only snapshots with this tag")
    f.add_argument("--path", action="append", default=[], help="only snapshots of this path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``tag``: add, remove or set the tags of snapshots (each rewritten as a new object)."""
    opts = TagOptions(
        add=[t for text in args.add for t in _tag_list(text)],
        remove=[t for text in args.remove for t in _tag_list(text)],
        set=None if args.set is None else [t for text in args.set for t in _tag_list(text)],
        snapshot_ids=args.snapshots,
        host=args.host,
        tags=args.tag,
        paths=[os.path.abspath(p) for p in args.path],
    )
    repo = ctx.open_repo()
    result = run_tag(repo, opts)
    if ctx.json:
        ctx.emit_json(
            {
                "changed": [
                    {"old": c.old.id, "new": c.new.id, "tags": c.new.tags} for c in result.changed
                ],
                "unchanged": [s.id for s in result.unchanged],
                "kept_old": [snapshot_json(c.old) | {"new": c.new.id} for c in result.kept_old],
            }
        )
    else:
        for c in result.changed:
            tags = ", ".join(c.new.tags) or "no tags"
            ctx.print(f"{c.old.short_id} -> {c.new.short_id}  [{tags}]")
        ctx.print(
            f"{len(result.changed)} snapshot(s) changed, {len(result.unchanged)} already tagged so"
        )
    if result.kept_old:
        ids = ", ".join(f"{c.old.short_id} (now also {c.new.short_id})" for c in result.kept_old)
        raise StoragePermissionDenied(
            f"the storage keeps the old snapshots {ids}: both copies are listed",
            hint="a retention period or legal hold protects them; 'safehold forget' removes "
            "the old ones once it is over",
        )
    return 0
