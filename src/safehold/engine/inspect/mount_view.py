"""What ``safehold mount`` shows: the repository's snapshots as one read-only tree.

The layout is the one restic users know (borg users find the same snapshots by name)::

    ids/<short id>/...            every snapshot by its id (the full id if two share 8 digits)
    snapshots/<time>/...          every snapshot by its time; snapshots/latest -> the newest
    hosts/<host>/<time>/...       the snapshots of each host; hosts/<host>/latest
    tags/<tag>/<time>/...         the snapshots carrying each tag; tags/<tag>/latest

``<time>`` is the snapshot's time in its own zone, ``2026-12-06T16:39:45+01:00`` (``Z`` for
UTC); two snapshots of the same second get ``-1``, ``-2``... in id order. Below a snapshot
is its root tree: the backed-up paths at their absolute positions, as ``ls`` shows them. A
host or tag that is not a usable file name (empty, ``.``, ``..``, with ``/``) is left out
of ``hosts/`` and ``tags/``; its snapshots are still under ``ids/`` and ``snapshots/``.

Everything is read from the repository as it is asked for: folders from their trees
(decoded and checked by the tree decoder, so a hostile or damaged tree is an error, never
files), file contents blob by blob through :meth:`Repository.load_blob`, which verifies each
blob against its id and reads another copy when prune's sweep deleted the one the index
named. A damaged blob or tree fails the call that needs it (``EIO``) and is reported
through ``on_error``; the rest stays readable.

The snapshot list is read again when a top folder is listed, at most every
:data:`REFRESH_SECONDS`: new snapshots appear (the index is loaded again, for their data)
and forgotten ones disappear. The caller holds a lock for as long as this view is used;
every snapshot shown was listed while it was held, so its data stays until it is released
(docs/format.md, section 16).

This module knows nothing of FUSE (:mod:`safehold.engine.inspect.mount` serves it): errors are
``OSError`` with an ``errno``, attributes are ``st_*`` dictionaries.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from safehold.errors import ObjectNotFound, SafeholdError
from safehold.ids import BlobId, HexId, blob_from_hex
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot

__all__ = ["REFRESH_SECONDS", "Entry", "MountView"]

REFRESH_SECONDS = 30.0
TOP = ("hosts", "ids", "snapshots", "tags")
LATEST = "latest"
# Trees kept as name -> node dictionaries (each path lookup walks down from the root).
TREE_DICTS = 4096
# Decrypted blobs kept for reads: the kernel reads 128 KiB at a time, blobs are ~1 MiB.
BLOB_CACHE_BYTES = 64 << 20

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TYPE_BITS = {
    t.FILE: stat.S_IFREG,
    t.DIR: stat.S_IFDIR,
    t.SYMLINK: stat.S_IFLNK,
    t.FIFO: stat.S_IFIFO,
    t.CHARDEV: stat.S_IFCHR,
    t.BLOCKDEV: stat.S_IFBLK,
    t.SOCKET: stat.S_IFSOCK,
}


@dataclass(frozen=True)
class Entry:
    """One path of the mounted tree: a folder of the layout (``names``), a ``latest``
    link (``target``), or a node of a snapshot (``node``; a snapshot's root is a folder
    node whose subtree is the snapshot's tree)."""

    names: tuple[str, ...] | None = None
    target: str = ""
    node: t.Node | None = None
    snap: Snapshot | None = None  # the snapshot ``node`` belongs to
    time_ns: int = 0  # of a layout folder or link: its newest snapshot's


@dataclass
class _Layout:
    by_id: dict[str, Snapshot] = field(default_factory=dict)
    ids: dict[str, Snapshot] = field(default_factory=dict)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    hosts: dict[str, dict[str, Snapshot]] = field(default_factory=dict)
    tags: dict[str, dict[str, Snapshot]] = field(default_factory=dict)


@dataclass
class _OpenFile:
    node: t.Node
    starts: list[int]  # offset of each blob in the file
    ids: list[BlobId]


class MountView:
    """The mounted tree over ``repo``, whose lock the caller holds and whose index is
    loaded. Thread-safe: FUSE calls it from several threads."""

    def __init__(
        self,
        repo: Repository,
        *,
        on_error: Callable[[str, str], None] | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.repo = repo
        self.on_error = on_error
        self.refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._uid, self._gid = os.getuid(), os.getgid()
        self._layout = _Layout()
        self._listed_at: float | None = None
        self._refresh_lock = threading.Lock()
        self._dicts: OrderedDict[HexId, dict[str, t.Node]] = OrderedDict()
        self._dicts_lock = threading.Lock()
        self._blobs: OrderedDict[BlobId, bytes] = OrderedDict()
        self._blob_bytes = 0
        self._blobs_lock = threading.Lock()
        self._loading: dict[BlobId, threading.Event] = {}
        self._files: dict[int, _OpenFile] = {}
        self._next_fh = 1
        self._files_lock = threading.Lock()
        self._reported: set[str] = set()

    # --- the snapshot list -------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Read the snapshot list again if it is older than ``refresh_seconds``."""
        with self._refresh_lock:
            now = self._monotonic()
            if (
                not force
                and self._listed_at is not None
                and now - self._listed_at < self.refresh_seconds
            ):
                return
            old = self._layout.by_id
            ids = set(self.repo.list_snapshot_ids())
            snaps = {i: s for i, s in old.items() if i in ids}
            new_ids = sorted(ids - set(old))
            for sid in new_ids:
                try:
                    snaps[sid] = self.repo.load_snapshot(sid)
                except ObjectNotFound:
                    continue  # forgotten while we listed
                except SafeholdError as exc:
                    self.repo.warn(f"snapshots/{sid}", f"skipped a damaged snapshot ({exc})")
            if new_ids and self._listed_at is not None:
                # Their index files were written before them: loading now finds their blobs.
                self.repo.load_index()
            if self._listed_at is None or set(snaps) != set(old):
                self._layout = _build_layout(snaps.values())
            self._listed_at = now

    @property
    def snapshots(self) -> list[Snapshot]:
        """The snapshots shown, oldest first."""
        return sorted(self._layout.by_id.values(), key=lambda s: (s.time, s.id))

    # --- paths -------------------------------------------------------------------------

    def lookup(self, path: str) -> Entry:
        """The entry at ``path`` (``/`` is the mount's root); ``OSError(ENOENT)`` if none,
        ``OSError(EIO)`` if a tree on the way cannot be read."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return Entry(names=TOP, time_ns=self._newest(self._layout.by_id.values()))
        top, rest = parts[0], parts[1:]
        if top not in TOP:
            raise _error(errno.ENOENT)
        if not rest:
            self.refresh()
        layout = self._layout
        if top == "ids":
            return self._in_group(layout.ids, rest, latest=False)
        if top == "snapshots":
            return self._in_group(layout.snapshots, rest, latest=True)
        groups = layout.hosts if top == "hosts" else layout.tags
        if not rest:
            newest = self._newest(s for g in groups.values() for s in g.values())
            return Entry(names=tuple(sorted(groups)), time_ns=newest)
        group = groups.get(rest[0])
        if group is None:
            raise _error(errno.ENOENT)
        return self._in_group(group, rest[1:], latest=True)

    def _in_group(self, group: dict[str, Snapshot], rest: list[str], *, latest: bool) -> Entry:
        # A group's names are in time order (_build_layout): its last is the newest.
        newest = next(reversed(group), "") if latest else ""
        if not rest:
            names = tuple(group) + ((LATEST,) if newest else ())
            return Entry(names=names, time_ns=self._newest(group.values()))
        if newest and rest[0] == LATEST:
            if len(rest) > 1:
                # The kernel follows the link itself; a path through it is not ours.
                raise _error(errno.ENOENT)
            return Entry(target=newest, time_ns=_ns(group[newest]))
        snap = group.get(rest[0])
        if snap is None:
            raise _error(errno.ENOENT)
        root = t.Node(
            name=rest[0],
            type=t.DIR,
            mode=0o555,
            uid=self._uid,
            gid=self._gid,
            mtime_ns=_ns(snap),
            ctime_ns=_ns(snap),
            subtree=snap.tree,
        )
        return Entry(node=self._walk(root, rest[1:], snap), snap=snap)

    def _walk(self, node: t.Node, names: list[str], snap: Snapshot) -> t.Node:
        for name in names:
            if node.type != t.DIR or not node.subtree:
                raise _error(errno.ENOTDIR if node.type != t.DIR else errno.ENOENT)
            child = self._children(node.subtree, snap).get(name)
            if child is None:
                raise _error(errno.ENOENT)
            node = child
        return node

    def _children(self, tree_id: HexId, snap: Snapshot) -> dict[str, t.Node]:
        with self._dicts_lock:
            found = self._dicts.get(tree_id)
            if found is not None:
                self._dicts.move_to_end(tree_id)
                return found
        try:
            nodes = self.repo.load_tree(tree_id)
        except SafeholdError as exc:
            self._report(f"tree {tree_id[:8]} of snapshot {snap.short_id}", exc)
            raise _error(errno.EIO) from exc
        found = {n.name: n for n in nodes}
        with self._dicts_lock:
            self._dicts[tree_id] = found
            if len(self._dicts) > TREE_DICTS:
                self._dicts.popitem(last=False)
        return found

    def listdir(self, path: str) -> list[str]:
        """The names in the folder at ``path``; raises ``OSError(ENOTDIR)`` for anything else."""
        entry = self.lookup(path)
        if entry.names is not None:
            return list(entry.names)
        node = entry.node
        if node is None or node.type != t.DIR:
            raise _error(errno.ENOTDIR)
        if not node.subtree or entry.snap is None:
            return []
        return list(self._children(node.subtree, entry.snap))

    def attributes(self, path: str) -> dict[str, int]:
        """``st_*`` fields of ``path``, times in nanoseconds."""
        entry = self.lookup(path)
        if entry.names is not None:
            return self._layout_attrs(stat.S_IFDIR | 0o555, entry.time_ns, nlink=2)
        if entry.node is None:
            attrs = self._layout_attrs(stat.S_IFLNK | 0o777, entry.time_ns, nlink=1)
            attrs["st_size"] = len(os.fsencode(entry.target))
            return attrs
        node = entry.node
        if node.type == t.FILE:
            size = node.size
        elif node.type == t.SYMLINK:
            size = len(os.fsencode(node.target))
        else:
            size = 0
        return {
            "st_mode": _TYPE_BITS.get(node.type, stat.S_IFREG) | (node.mode & 0o7777),
            "st_nlink": 2 if node.type == t.DIR else max(1, node.links),
            "st_uid": node.uid,
            "st_gid": node.gid,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_rdev": node.rdev,
            "st_mtime": node.mtime_ns,
            "st_ctime": node.ctime_ns,
            "st_atime": node.mtime_ns,  # access times are not stored
        }

    def _layout_attrs(self, mode: int, time_ns: int, *, nlink: int) -> dict[str, int]:
        return {
            "st_mode": mode,
            "st_nlink": nlink,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_mtime": time_ns,
            "st_ctime": time_ns,
            "st_atime": time_ns,
        }

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes stored for ``path``, but ACLs: FUSE hands those only
        to file systems that enforce them, and this one lets the kernel check the modes
        (``ls -l`` and restore show and set the ACLs)."""
        node = self.lookup(path).node
        if node is None:
            return {}
        return {k: v for k, v in node.xattrs.items() if not k.startswith("system.posix_acl_")}

    def readlink(self, path: str) -> str:
        """The target of the symlink at ``path``; raises ``OSError(EINVAL)`` for anything else."""
        entry = self.lookup(path)
        if entry.names is None and entry.node is None:
            return entry.target
        if entry.node is not None and entry.node.type == t.SYMLINK:
            return entry.node.target
        raise _error(errno.EINVAL)

    # --- file contents -------------------------------------------------------------------

    def open(self, path: str) -> int:
        """A handle for reading the file at ``path``."""
        node = self.lookup(path).node
        if node is None or node.type != t.FILE:
            raise _error(errno.EISDIR if node is None or node.type == t.DIR else errno.EACCES)
        starts, ids, offset = [], [], 0
        for hex_id in node.content:
            blob_id = blob_from_hex(hex_id)
            loc = self.repo.locate(blob_id)
            if loc is None:
                self._report(path, f"blob {hex_id[:8]} is not in the index")
                raise _error(errno.EIO)
            starts.append(offset)
            ids.append(blob_id)
            offset += loc.raw_length
        if offset != node.size:
            why = (
                node.error or f"the snapshot records {node.size} bytes but its blobs hold {offset}"
            )
            self._report(path, why)
            raise _error(errno.EIO)
        with self._files_lock:
            fh = self._next_fh
            self._next_fh += 1
            self._files[fh] = _OpenFile(node, starts, ids)
        return fh

    def read(self, fh: int, size: int, offset: int, path: str = "") -> bytes:
        """Up to ``size`` bytes of open file ``fh`` from ``offset`` (fewer at its end); ``path``
        names it in errors."""
        f = self._files.get(fh)
        if f is None:
            raise _error(errno.EBADF)
        end = min(offset + size, f.node.size)
        if offset >= end:
            return b""
        out = []
        i = bisect.bisect_right(f.starts, offset) - 1
        while i < len(f.ids) and f.starts[i] < end:
            data = self._blob(f.ids[i], path)
            lo = max(offset - f.starts[i], 0)
            hi = min(end - f.starts[i], len(data))
            out.append(data[lo:hi])
            i += 1
        return b"".join(out)

    def release(self, fh: int) -> None:
        """Forget handle ``fh``."""
        with self._files_lock:
            self._files.pop(fh, None)

    def _blob(self, blob_id: BlobId, path: str) -> bytes:
        """A blob's bytes, verified, through a small cache; one load per blob at a time."""
        while True:
            with self._blobs_lock:
                data = self._blobs.get(blob_id)
                if data is not None:
                    self._blobs.move_to_end(blob_id)
                    return data
                waiting = self._loading.get(blob_id)
                if waiting is None:
                    self._loading[blob_id] = threading.Event()
                    break
            waiting.wait()
        try:
            data = self.repo.load_blob(blob_id)
        except SafeholdError as exc:
            self._report(path or f"blob {blob_id.hex()[:8]}", exc)
            raise _error(errno.EIO) from exc
        finally:
            with self._blobs_lock:
                self._loading.pop(blob_id).set()
        with self._blobs_lock:
            if blob_id not in self._blobs:
                self._blobs[blob_id] = data
                self._blob_bytes += len(data)
            while self._blob_bytes > BLOB_CACHE_BYTES and len(self._blobs) > 1:
                _old, dropped = self._blobs.popitem(last=False)
                self._blob_bytes -= len(dropped)
        return data

    # --- helpers -------------------------------------------------------------------------

    def _report(self, what: str, why: object) -> None:
        message = why.message if isinstance(why, SafeholdError) else str(why)
        key = f"{what}: {message}"
        if key in self._reported:
            return
        self._reported.add(key)
        if self.on_error is not None:
            self.on_error(what, message)

    @staticmethod
    def _newest(snaps: Iterable[Snapshot]) -> int:
        return max((_ns(s) for s in snaps), default=0)


def _ns(snap: Snapshot) -> int:
    return (snap.time - _EPOCH) // timedelta(microseconds=1) * 1000


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def time_name(snap: Snapshot) -> str:
    """``2026-12-06T16:39:45+01:00``, or ``...Z`` in UTC (restic's default template)."""
    text = snap.time.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _usable(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def _build_layout(snaps: Iterable[Snapshot]) -> _Layout:
    ordered = sorted(snaps, key=lambda s: (s.time, s.id))
    layout = _Layout(by_id={s.id: s for s in ordered})
    shorts: dict[str, int] = {}
    for s in ordered:
        shorts[s.short_id] = shorts.get(s.short_id, 0) + 1
    for s in ordered:
        layout.ids[s.short_id if shorts[s.short_id] == 1 else s.id] = s
        name = base = time_name(s)
        n = 0
        while name in layout.snapshots:
            n += 1
            name = f"{base}-{n}"
        layout.snapshots[name] = s
    for name, s in layout.snapshots.items():
        if _usable(s.hostname):
            layout.hosts.setdefault(s.hostname, {})[name] = s
        for tag in dict.fromkeys(s.tags):
            if _usable(tag):
                layout.tags.setdefault(tag, {})[name] = s
    return layout
