"""Listing the folders to back up while the repository opens.

Before a backup can walk, it derives the key (scrypt: 0.1-0.2 s of C that releases the
interpreter lock) and loads the index; the walk then spends about 5 µs an item listing
folders and stat-ing their items (0.17 s of a no-change backup of 35,000 items). A
:class:`Prescan` started before the repository is opened does that listing meanwhile, in a
thread, in the walk's own order, and hands each folder over when the walk reaches it.

The walk loses nothing by it: a folder the prescan has not finished (or skipped: an error,
an exclude, another file system, the size limit) is listed by the walk itself, and once the
walk gets ahead the prescan stops. Items are stat-ed up to a second earlier than the walk
would have; the walk compares what it was given, exactly as if a file changed just after
its own stat. Folders are held compactly (the names, and the stat fields the walk uses in
one array) and the walk takes each one as it goes, so the prescan's memory is about
110 bytes an item and at most ``limit`` items.
"""

from __future__ import annotations

import operator
import os
import stat
import threading
from array import array
from types import TracebackType

from safehold.engine.backup.scan import Excluder

# The stat fields the walk uses (engine/backup/plan.py, engine/backup/scan.py), in this order.
FIELDS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blocks",
    "st_rdev",
)
_N = len(FIELDS)
_ROW = operator.attrgetter(*FIELDS)
_BY_NAME = operator.attrgetter("name")
LIMIT = 200_000  # items held at most (~22 MB): a larger tree is listed by the walk too


class Stat:
    """The fields of an ``os.stat_result`` the walk reads."""

    __slots__ = FIELDS

    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_blocks: int
    st_rdev: int


class Entry:
    """A listed item, answering what the walk asks of an ``os.DirEntry``."""

    __slots__ = ("_stat", "name", "path")

    def __init__(self, name: str, path: str, st: Stat) -> None:
        self.name = name
        self.path = path
        self._stat = st

    def stat(self, *, follow_symlinks: bool = True) -> Stat:
        """The item's own ``lstat`` fields, as listed (``follow_symlinks`` must be False)."""
        assert not follow_symlinks, "the walk never follows symlinks"
        return self._stat


class Prescan:
    """Lists ``roots`` (absolute, normalised paths) depth-first in name order, in a thread,
    until done, stopped, or ``limit`` items are held. Use as a context manager."""

    def __init__(
        self,
        roots: list[str],
        excluder: Excluder,
        one_file_system: bool,
        *,
        limit: int = LIMIT,
    ) -> None:
        self._roots = roots
        # A walk of its own (Excluder.fork): the exclusions follow the folders it lists.
        self._excluder = excluder.fork() if excluder.active else None
        self._one_fs = one_file_system
        self._limit = limit
        # Items listed (written by the prescan thread) and taken (by the walk): one writer
        # each, so neither count loses an update; held = listed - taken.
        self._listed = 0
        self._taken = 0
        # folder -> (its items' names joined by NUL, which no name holds; their stat rows)
        self._done: dict[str, tuple[str, array[int]]] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="prescan", daemon=True)

    def start(self) -> Prescan:
        """Start listing in the background; returns this prescan."""
        self._thread.start()
        return self

    def __enter__(self) -> Prescan:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop listing, wait for the thread, and drop what it listed."""
        self._stop = True
        if self._thread.is_alive():
            self._thread.join()
        self._done.clear()

    def take(self, path: str) -> list[Entry] | None:
        """The items of the folder at ``path`` in name order, or None (list it yourself)."""
        got = self._done.pop(path, None)
        if got is None:
            self._stop = True  # the walk is ahead (or this folder was skipped): stop here
            return None
        joined, rows = got
        names = joined.split("\0") if rows else []
        self._taken += len(names)
        prefix = path if path.endswith("/") else path + "/"
        out = []
        for i, name in enumerate(names):
            st = Stat.__new__(Stat)
            j = i * _N
            (
                st.st_mode,
                st.st_ino,
                st.st_dev,
                st.st_nlink,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_blocks,
                st.st_rdev,
            ) = rows[j : j + _N]
            out.append(Entry(name, prefix + name, st))
        return out

    def _run(self) -> None:
        try:
            for root in self._roots:
                try:
                    st = os.lstat(root)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode) and not self._folder(root, st.st_dev):
                    return
        except Exception:  # e.g. RecursionError in a very deep tree
            # Only a head start is lost: the walk lists whatever is missing itself, and
            # meets (and reports) any real problem with the tree there.
            self._stop = True

    def _folder(self, path: str, dev: int) -> bool:
        """List ``path`` and the folders below it; False once the prescan should stop."""
        if self._stop or self._listed - self._taken >= self._limit:
            return False
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=_BY_NAME)
            names = []
            rows = array("q")
            below = []
            skip = self._excluder.folder(path, entries) if self._excluder is not None else None
            for de in entries:
                st = de.stat(follow_symlinks=False)
                names.append(de.name)
                rows.extend(_ROW(st))
                if (
                    stat.S_ISDIR(st.st_mode)
                    and (skip is None or not skip(de.name))
                    and not (self._one_fs and st.st_dev != dev)
                ):
                    below.append((de.path, st.st_dev))
        except (OSError, OverflowError):
            return True  # the walk lists this folder itself and reports what failed
        self._listed += len(names)
        self._done[path] = ("\0".join(names), rows)
        return all(self._folder(p, d) for p, d in below)
