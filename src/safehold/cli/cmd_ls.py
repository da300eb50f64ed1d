"""``safehold ls``: list what a snapshot holds."""

from __future__ import annotations

import argparse
import json
import stat
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from safehold.cli.cmd_snapshots import snapshot_json
from safehold.cli.context import Context, add_latest_filters, find_snapshot
from safehold.engine.dump import locate
from safehold.engine.walk import walk
from safehold.repository import tree as t
from safehold.repository.repository import Repository

_FORMAT_BITS = {
    t.FILE: stat.S_IFREG,
    t.DIR: stat.S_IFDIR,
    t.SYMLINK: stat.S_IFLNK,
    t.FIFO: stat.S_IFIFO,
    t.CHARDEV: stat.S_IFCHR,
    t.BLOCKDEV: stat.S_IFBLK,
    t.SOCKET: stat.S_IFSOCK,
}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ls",
        help="list files and folders in a snapshot",
        description="List SNAPSHOT (an id prefix, or 'latest'), one line per item. Without "
        "PATH everything is listed; with PATH, that item and, for a folder, what it holds "
        "(everything below it with -R). With --json, one JSON object per line as restic "
        'prints them: the snapshot first, then each item ("struct_type": "snapshot" or '
        '"node").',
    )
    p.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot id prefix or 'latest'")
    p.add_argument("path", nargs="?", metavar="PATH", help="list only this path in the snapshot")
    p.add_argument(
        "-l", "--long", action="store_true", help="show type, mode, owner, size and time"
    )
    p.add_argument(
        "-R", "--recursive", action="store_true", help="with PATH: list everything below it"
    )
    add_latest_filters(p)
    p.set_defaults(func=run)


def listing(
    repo: Repository, path: str, node: t.Node, *, recursive: bool
) -> Iterator[tuple[str, t.Node]]:
    """``path`` itself (unless it is the root), then what is below it: everything when
    ``recursive``, else a folder's own children."""
    if path != "/":
        yield path, node
    if node.type != t.DIR or not node.subtree:
        return
    prefix = "" if path == "/" else path
    if recursive:
        yield from walk(repo, node.subtree, prefix)
    else:
        for child in repo.load_tree(node.subtree):
            yield f"{prefix}/{child.name}", child


def permissions(node: t.Node) -> str:
    """``-rw-r--r--`` as ``ls -l`` shows it."""
    return stat.filemode(_FORMAT_BITS.get(node.type, 0) | node.mode)


def node_json(path: str, node: t.Node) -> dict[str, Any]:
    return {
        "path": path,
        "name": node.name,
        "type": node.type,
        "mode": node.mode,
        "permissions": permissions(node),
        "size": node.size,
        "mtime": _iso(node.mtime_ns),
        "mtime_ns": node.mtime_ns,
        "uid": node.uid,
        "gid": node.gid,
        "user": node.user,
        "group": node.group,
        "target": node.target if node.type == t.SYMLINK else None,
        "links": node.links,
        "inode": node.inode,
        "error": node.error or None,
    }


def long_line(path: str, node: t.Node) -> str:
    user = node.user or str(node.uid)
    group = node.group or str(node.gid)
    try:
        when = datetime.fromtimestamp(node.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a time no calendar here can show
        when = f"{node.mtime_ns / 1e9:19.0f}"
    line = f"{permissions(node)} {user:>8} {group:>8} {node.size:>12}  {when}  {path}"
    if node.type == t.SYMLINK:
        line += f" -> {node.target}"
    return line


def _iso(ns: int) -> str | None:
    secs, frac = divmod(ns, 1_000_000_000)
    try:
        stamp = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return None
    return f"{stamp}.{frac:09d}Z"


def run(args: argparse.Namespace, ctx: Context) -> int:
    repo = ctx.open_repo()
    with repo.lock("read"):
        repo.load_index()
        snap = find_snapshot(repo, args.snapshot, args)
        path, node = locate(repo, snap, args.path or "/")
        items = listing(repo, path, node, recursive=args.recursive or args.path is None)
        if ctx.json:
            # As restic prints it: one JSON object per line (NDJSON), the snapshot first,
            # then each item, told apart by "struct_type". Streamed item by item: a
            # listing may be far larger than memory allows.
            head = snapshot_json(snap) | {"struct_type": "snapshot"}
            sys.stdout.write(json.dumps(head, default=str) + "\n")
            for item_path, item in items:
                record = node_json(item_path, item) | {"struct_type": "node"}
                sys.stdout.write(json.dumps(record) + "\n")
            return 0
        if ctx.quiet:
            return 0
        # Bytes, so that names that are not UTF-8 print as they are on disk.
        out = sys.stdout.buffer
        for item_path, item in items:
            line = long_line(item_path, item) if args.long else item_path
            out.write(line.encode("utf-8", "surrogateescape") + b"\n")
    return 0
