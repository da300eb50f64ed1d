"""Items of the file system as tree nodes, and exclude patterns."""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import stat
from functools import lru_cache
from typing import Protocol

from safehold.repository import tree as t


class StatLike(Protocol):
    """What the walk reads of an item's ``lstat``: an ``os.stat_result``, or a prescanned
    item's (engine/prescan.py)."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
    @property
    def st_dev(self) -> int: ...
    @property
    def st_nlink(self) -> int: ...
    @property
    def st_uid(self) -> int: ...
    @property
    def st_gid(self) -> int: ...
    @property
    def st_size(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...
    @property
    def st_ctime_ns(self) -> int: ...
    @property
    def st_blocks(self) -> int: ...
    @property
    def st_rdev(self) -> int: ...


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


def node_from_stat(name: str, st: StatLike, path: str) -> t.Node:
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
        self.active = bool(patterns)

    def excluded(self, path: str, name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, p) for p in self.name_patterns):
            return True
        return any(fnmatch.fnmatchcase(path, p) for p in self.path_patterns)
