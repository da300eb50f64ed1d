"""``safehold ls``: list what a snapshot holds."""

from __future__ import annotations

import argparse
import base64
import json
import stat
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from safehold.cli.cmd_snapshots import snapshot_json
from safehold.cli.config_run import add_config_repository_argument, repository_of
from safehold.cli.context import Context, add_latest_filters, find_snapshot
from safehold.engine import xattrs as xa
from safehold.engine.tree_walk import locate, walk
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
    """Add ``ls`` and its options to the parser."""
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
        "-l",
        "--long",
        action="store_true",
        help="show type, mode, owner, size and time, and below an item its extended "
        "attributes and ACLs ('+' after the mode: it has an ACL)",
    )
    p.add_argument(
        "-R", "--recursive", action="store_true", help="with PATH: list everything below it"
    )
    add_config_repository_argument(p)
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
    """``-rw-r--r--`` as ``ls -l`` shows it; with a ``+`` after it (as GNU ls) if the item
    has an ACL."""
    bits = stat.filemode(_FORMAT_BITS.get(node.type, 0) | node.mode)
    return bits + "+" if xa.ACL_ACCESS in node.xattrs or xa.ACL_DEFAULT in node.xattrs else bits


def attr_lines(node: t.Node) -> list[str]:
    """The item's extended attributes, one a line, as ``getfattr -d`` shows them (a value
    that is text in quotes, any other in base64 after ``0s``), but ACLs as ``getfacl -n``
    writes their entries: ``acl: user::rw-,user:1000:rwx,...``."""
    out = []
    for name, value in sorted(node.xattrs.items()):
        entries = xa.acl_text(value) if name in (xa.ACL_ACCESS, xa.ACL_DEFAULT) else None
        if entries is not None:
            label = "acl" if name == xa.ACL_ACCESS else "default acl"
            out.append(f"{label}: {','.join(entries)}")
        else:
            out.append(f"{name}={_attr_value(value)}")
    return out


def _attr_value(value: bytes) -> str:
    text = value[:-1] if value.endswith(b"\0") else value  # C strings keep their NUL
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        decoded = ""
    if decoded.isprintable() and (decoded or not value):
        return json.dumps(decoded, ensure_ascii=False)
    return "0s" + base64.b64encode(value).decode("ascii")


def node_json(path: str, node: t.Node) -> dict[str, Any]:
    """One item as ``ls --json`` prints it."""
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
        # Extended attributes by name, values in base64 (ACLs among them, raw), and the
        # ACLs' entries again as getfacl -n writes them.
        "xattrs": t.encode_xattrs(node.xattrs) if node.xattrs else None,
        "acl": _acl(node, xa.ACL_ACCESS),
        "default_acl": _acl(node, xa.ACL_DEFAULT),
    }


def _acl(node: t.Node, name: str) -> list[str] | None:
    value = node.xattrs.get(name)
    return None if value is None else xa.acl_text(value)


def long_line(path: str, node: t.Node) -> str:
    """One item as ``ls --long`` prints it: permissions, owner, size, modification time, path."""
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
    """``ls``: the items of a snapshot, or of a folder in it."""
    repo = repository_of(args, ctx)
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
            if args.long and item.xattrs:
                attrs = "".join(f"    {a}\n" for a in attr_lines(item))
                out.write(attrs.encode("utf-8", "surrogateescape"))
    return 0
