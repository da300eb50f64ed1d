"""Walking the folders to back up: metadata, excludes, file systems.

The walk only stats (it reads no file content), so it is fast, and it yields the whole
listing before any file is read: the backup can then schedule the largest files first and
keep every core busy until the end.
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import stat
from dataclasses import dataclass, field
from functools import lru_cache

from safehold.repository import tree as t


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def node_from_stat(name: str, st: os.stat_result, path: str) -> t.Node:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        kind = t.DIR
    elif stat.S_ISREG(mode):
        kind = t.FILE
    elif stat.S_ISLNK(mode):
        kind = t.SYMLINK
    elif stat.S_ISFIFO(mode):
        kind = t.FIFO
    elif stat.S_ISCHR(mode):
        kind = t.CHARDEV
    elif stat.S_ISBLK(mode):
        kind = t.BLOCKDEV
    else:
        kind = t.SOCKET
    node = t.Node(
        name=name,
        type=kind,
        mode=stat.S_IMODE(mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=user_name(st.st_uid),
        group=group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
    )
    if kind == t.FILE:
        node.size = st.st_size
        node.inode = st.st_ino
        # Fewer allocated blocks than bytes: holes worth recreating on restore.
        node.sparse = st.st_size > 64 * 1024 and st.st_blocks * 512 < st.st_size
    if kind != t.DIR and st.st_nlink > 1:
        node.links, node.inode, node.dev = st.st_nlink, st.st_ino, st.st_dev
    if kind in (t.CHARDEV, t.BLOCKDEV):
        node.rdev = st.st_rdev
    if kind == t.SYMLINK:
        node.target = os.readlink(path)
    return node


class Excluder:
    """Exclude patterns: a pattern without ``/`` matches any name; with ``/`` it matches the
    absolute path (and everything below it)."""

    def __init__(self, patterns: list[str]) -> None:
        self.name_patterns = [p for p in patterns if "/" not in p]
        self.path_patterns = [p.rstrip("/") for p in patterns if "/" in p]

    def excluded(self, path: str, name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, p) for p in self.name_patterns):
            return True
        return any(fnmatch.fnmatchcase(path, p) for p in self.path_patterns)


@dataclass(eq=False)
class Entry:
    """One item found by the walk; ``children`` for folders."""

    path: str
    node: t.Node
    children: list[Entry] = field(default_factory=list)


@dataclass
class ScanResult:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


def scan(
    path: str,
    *,
    excluder: Excluder,
    one_file_system: bool,
    result: ScanResult,
) -> Entry:
    """Stat ``path`` and everything below it (without following symlinks)."""
    st = os.lstat(path)
    name = os.path.basename(path) or "/"
    root = Entry(path, node_from_stat(name, st, path))
    if root.node.type == t.DIR:
        result.dirs += 1
        _scan_dir(root, st.st_dev, excluder, one_file_system, result)
    elif root.node.type == t.FILE:
        result.files += 1
        result.bytes += root.node.size
    return root


def _scan_dir(entry: Entry, dev: int, excluder: Excluder, one_fs: bool, result: ScanResult) -> None:
    try:
        with os.scandir(entry.path) as it:
            items = list(it)
    except OSError as exc:
        msg = exc.strerror or str(exc)
        entry.node.error = msg
        result.errors.append((entry.path, msg))
        return
    for de in items:
        if excluder.excluded(de.path, de.name):
            continue
        try:
            st = de.stat(follow_symlinks=False)
            node = node_from_stat(de.name, st, de.path)
        except OSError as exc:
            result.errors.append((de.path, exc.strerror or str(exc)))
            continue
        child = Entry(de.path, node)
        entry.children.append(child)
        if node.type == t.DIR:
            result.dirs += 1
            if one_fs and st.st_dev != dev:
                continue  # mount point: keep the folder itself, not what is mounted there
            _scan_dir(child, dev, excluder, one_fs, result)
        elif node.type == t.FILE:
            result.files += 1
            result.bytes += node.size
