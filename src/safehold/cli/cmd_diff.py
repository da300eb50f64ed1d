"""``safehold diff``: what changed between two snapshots."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from safehold.cli.config_run import add_config_repository_argument, repository_of
from safehold.cli.context import Context, add_latest_filters, find_snapshot, human_bytes
from safehold.engine.inspect.diff import Change, DiffStats, diff_trees
from safehold.repository import tree as t


def register(sub: Any) -> None:
    """Add ``diff`` and its options to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "diff",
        help="show what changed between two snapshots",
        description="Compare snapshot A with snapshot B (id prefixes, or 'latest'). One line "
        "per path: '+' added, '-' removed, 'M' content changed, 'U' only metadata (mode, "
        "owner, modification time, extended attributes, ACLs) changed, 'T' type changed; "
        "then a summary. Folders end in '/'. Identical folders are skipped without being "
        "read, so a diff takes time in proportion to what changed.",
    )
    p.add_argument("snapshot_a", metavar="A", help="the older snapshot")
    p.add_argument("snapshot_b", metavar="B", help="the newer snapshot")
    add_config_repository_argument(p)
    add_latest_filters(p)
    p.set_defaults(func=run)


def change_json(c: Change) -> dict[str, Any]:
    """One change as ``diff --json`` prints it."""
    node = c.node
    return {
        "path": c.path,
        "change": c.kind,
        "type": node.type,
        "old_type": c.old.type if c.old is not None else None,
        "size": node.size,
        "old_size": c.old.size if c.old is not None else None,
    }


def summary_lines(s: DiffStats) -> list[str]:
    """The counts at the end of ``diff``'s output."""
    return [
        f"{s.added} added, {s.removed} removed, {s.modified} modified, "
        f"{s.metadata} metadata only, {s.type_changed} type changed",
        f"added:   {human_bytes(s.bytes_added)}",
        f"removed: {human_bytes(s.bytes_removed)}",
    ]


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``diff``: what changed between two snapshots."""
    repo = repository_of(args, ctx)
    with repo.lock("read"):
        repo.load_index()
        snaps = repo.list_snapshots()
        a, b = (
            find_snapshot(repo, ref, args, snapshots=snaps)
            for ref in (args.snapshot_a, args.snapshot_b)
        )
        result = diff_trees(repo, a.tree, b.tree)
    if ctx.json:
        ctx.emit_json(
            {
                "a": a.id,
                "b": b.id,
                "changes": [change_json(c) for c in result.changes],
                "summary": result.stats.to_json(),
            }
        )
        return 0
    if ctx.quiet:
        return 0
    out = sys.stdout.buffer
    out.write(f"comparing snapshot {a.short_id} to {b.short_id}:\n\n".encode())
    for c in result.changes:
        path = c.path + "/" if c.node.type == t.DIR else c.path
        out.write(f"{c.kind:<5}{path}\n".encode("utf-8", "surrogateescape"))
    out.write(b"\n")
    for line in summary_lines(result.stats):
        out.write(line.encode() + b"\n")
    return 0
