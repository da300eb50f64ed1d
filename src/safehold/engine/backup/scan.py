"""Items of the file system as tree nodes, and what a backup excludes."""

from __future__ import annotations

import bisect
import copy
import grp
import operator
import os
import pwd
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from safehold.errors import UsageError
from safehold.policy.patterns import NameTest, PatternList, State, every_name
from safehold.repository import tree as t


class StatLike(Protocol):
    """What the walk reads of an item's ``lstat``: an ``os.stat_result``, or a prescanned
    item's (engine/backup/prescan.py)."""

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
    """The user name of ``uid``, "" if it has none (cached: a walk asks for the same few)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str:
    """The group name of ``gid``, "" if it has none (cached like :func:`user_name`)."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def node_from_stat(name: str, st: StatLike, path: str) -> t.Node:
    """A tree node for the item ``name`` from its ``lstat`` result; ``path`` is read only for a
    symlink's target."""
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


# The Cache Directory Tagging Specification's tag (https://bford.info/cachedir/), as
# restic's --exclude-caches spells it for --exclude-if-present.
CACHEDIR_TAG = "CACHEDIR.TAG:Signature: 8a477f597d28d172789f06886806bc55"

_NAME = operator.attrgetter("name")


class Named(Protocol):
    """A folder's item as listed: an ``os.DirEntry`` or a prescanned entry."""

    @property
    def name(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _Tag:
    name: str
    header: bytes


def _tag(spec: str) -> _Tag:
    """``NAME[:HEADER]`` of --exclude-if-present."""
    name, _, header = spec.partition(":")
    if not name or "/" in name:
        raise UsageError(
            f"--exclude-if-present {spec!r}: give a file name, optionally followed by "
            "':' and the text the file must start with",
            hint="e.g. --exclude-if-present .nobackup",
        )
    return _Tag(name, header.encode("utf-8", "surrogateescape"))


class Excluder:
    """What a backup leaves out, as restic's options say (policy/patterns.py has the
    pattern syntax): items matching ``patterns`` or, ignoring case, ``ipatterns``; the
    items of a folder holding one of the tag files of ``if_present`` (``NAME[:HEADER]``:
    the folder and the tag file itself are kept); files larger than ``max_size`` bytes.

    A walk asks :meth:`folder` once per folder, in depth-first order, for a test of its
    items' names; it checks ``max_size`` itself on what it stats. ``active`` is False when
    no name can be excluded: the walk then asks nothing. An instance follows one walk (it
    keeps the states of the folders above the current one); another walk, in another
    thread, takes a :meth:`fork`.
    """

    def __init__(
        self,
        patterns: Sequence[str] = (),
        *,
        ipatterns: Sequence[str] = (),
        if_present: Sequence[str] = (),
        max_size: int | None = None,
        warn: Callable[[str, str], None] | None = None,
    ) -> None:
        self._list = PatternList(patterns, what="--exclude")
        self._ilist = PatternList(ipatterns, ignore_case=True, what="--iexclude")
        self._tags = tuple(_tag(s) for s in dict.fromkeys(if_present))
        self.max_size = max_size
        self._warn = warn
        self.active = bool(self._list or self._ilist or self._tags)
        # (folder path ending in "/", its state in each list) of the folders from the root
        # down to the last one asked about.
        self._stack: list[tuple[str, State, State]] = [("/", self._list.root, self._ilist.root)]

    def fork(self) -> Excluder:
        """The same exclusions for another walk (warnings are the first walk's to give)."""
        other = copy.copy(self)
        other._warn = None
        other._stack = self._stack[:1]
        return other

    def _states(self, path: str) -> tuple[State, State]:
        stack = self._stack
        key = path if path.endswith("/") else path + "/"
        while len(stack) > 1 and not key.startswith(stack[-1][0]):
            stack.pop()
        top, st, ist = stack[-1]
        for comp in key[len(top) :].split("/"):
            if comp:
                top += comp + "/"
                if self._list:
                    st = self._list.enter(st, comp)
                if self._ilist:
                    ist = self._ilist.enter(ist, comp)
                stack.append((top, st, ist))
        return st, ist

    def folder(self, path: str, entries: Sequence[Named]) -> NameTest | None:
        """A test for the names of the items of the folder at ``path`` (absolute), listed
        in name order in ``entries``; None when none of them is excluded by name."""
        tests: list[NameTest] = []
        if self._list or self._ilist:
            st, ist = self._states(path)
            for plist, state in ((self._list, st), (self._ilist, ist)):
                test = plist.names(state) if plist else None
                if test is every_name:
                    return every_name
                if test is not None:
                    tests.append(test)
        if self._tags:
            present = [tag.name for tag in self._tags if self._tagged(path, entries, tag)]
            if len(present) > 1:
                return every_name  # each tag file is an item the other tag excludes (as restic)
            if present:
                keep = present[0]
                tests.append(lambda name: name != keep)
        if not tests:
            return None
        if len(tests) == 1:
            return tests[0]
        return lambda name: any(test(name) for test in tests)

    def _tagged(self, path: str, entries: Sequence[Named], tag: _Tag) -> bool:
        i = bisect.bisect_left(entries, tag.name, key=_NAME)
        if i == len(entries) or entries[i].name != tag.name:
            return False
        return not tag.header or self._signed(os.path.join(path, tag.name), tag.header)

    def _signed(self, file: str, header: bytes) -> bool:
        """Whether the tag file starts with ``header``; a warning names one that does not."""
        try:
            # Non-blocking: a FIFO of that name must not stop the walk.
            fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                got = os.read(fd, len(header))
            finally:
                os.close(fd)
        except OSError as exc:
            why = f"could not read the exclusion tag file ({exc.strerror or exc})"
        else:
            if got == header:
                return True
            why = "the exclusion tag file does not start with the expected signature"
        if self._warn is not None:
            self._warn(file, f"{why}; its folder is backed up")
        return False

    def excludes_root(self, path: str) -> str | None:
        """Why the backup path ``path`` (absolute, normalised) is itself excluded, or None.
        restic leaves such a path out silently; a backup of it here is refused instead."""
        for plist, flag in ((self._list, "--exclude"), (self._ilist, "--iexclude")):
            if plist and plist.match(path):
                return f"it matches {flag} {', '.join(map(repr, plist.matching(path)))}"
        parent, name = os.path.split(path)
        for tag in self._tags:
            file = os.path.join(parent, tag.name)
            if (
                name != tag.name
                and os.path.lexists(file)
                and (not tag.header or self._signed(file, tag.header))
            ):
                return f"its folder holds {tag.name} (--exclude-if-present)"
        if self.max_size is not None:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) and st.st_size > self.max_size:
                return f"it is larger than --exclude-larger-than ({self.max_size} bytes)"
        return None
