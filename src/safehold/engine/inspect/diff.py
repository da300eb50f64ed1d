"""Comparing two snapshots, path by path.

Both trees are walked together in name order (trees are stored sorted by name), and two
folders with the same subtree id are not entered: equal ids mean equal content all the way
down, so a diff costs in proportion to what changed rather than to the snapshot's size.

Each path that differs gets one change:

``+`` added, ``-`` removed (everything below an added or removed folder is listed too),
``M`` modified (a file's content or size, a symlink's target, a device's number),
``U`` metadata only (mode, owner, modification time, extended attributes and ACLs),
``T`` type changed (a file became a folder, ...; what is below is listed as added/removed).

Change times, inode numbers and link counts are not compared: they change without the
data or anything a restore sets changing. Bytes added and removed count file content at
the same path, blob by blob: a 10 GiB file with one changed chunk adds that chunk's size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from safehold.engine.tree_walk import walk
from safehold.errors import IntegrityError
from safehold.ids import HexId, blob_from_hex
from safehold.repository import tree as t
from safehold.repository.repository import Repository

ADDED = "+"
REMOVED = "-"
MODIFIED = "M"
METADATA = "U"
TYPE_CHANGED = "T"


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two snapshots at ``path``."""

    path: str
    kind: str  # one of ADDED, REMOVED, MODIFIED, METADATA, TYPE_CHANGED
    old: t.Node | None  # None when added
    new: t.Node | None  # None when removed

    @property
    def node(self) -> t.Node:
        """The node as it is in the newer snapshot, or as it was if removed."""
        node = self.new if self.new is not None else self.old
        assert node is not None
        return node


@dataclass
class DiffStats:
    """How many items differ, by kind, and the bytes of files added and removed."""

    added: int = 0
    removed: int = 0
    modified: int = 0
    metadata: int = 0
    type_changed: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0

    def to_json(self) -> dict[str, int]:
        """The counts as ``diff --json`` prints them."""
        return {
            "added": self.added,
            "removed": self.removed,
            "modified": self.modified,
            "metadata": self.metadata,
            "type_changed": self.type_changed,
            "bytes_added": self.bytes_added,
            "bytes_removed": self.bytes_removed,
        }


@dataclass
class DiffResult:
    """Every change between two trees and their counts."""

    changes: list[Change] = field(default_factory=list)  # parents first, siblings by name
    stats: DiffStats = field(default_factory=DiffStats)


def diff_trees(repo: Repository, old_tree: HexId, new_tree: HexId) -> DiffResult:
    """Compare two root trees (``Snapshot.tree``); the index must be loaded."""
    differ = _Differ(repo)
    if old_tree != new_tree:
        differ.tree(old_tree, new_tree, "")
    return differ.result


def metadata_differs(a: t.Node, b: t.Node) -> bool:
    """Whether two nodes differ in what ``diff`` reports as metadata: mode, owner, modification
    time, extended attributes."""
    return (
        a.mode != b.mode
        or a.uid != b.uid
        or a.gid != b.gid
        or a.user != b.user
        or a.group != b.group
        or a.mtime_ns != b.mtime_ns
        or a.xattrs != b.xattrs
    )


def content_differs(a: t.Node, b: t.Node) -> bool:
    """Same-typed nodes whose data differs (a folder's children are compared apart)."""
    if a.type == t.FILE:
        return a.size != b.size or a.content != b.content or a.error != b.error
    if a.type == t.SYMLINK:
        return a.target != b.target
    if a.type in (t.CHARDEV, t.BLOCKDEV):
        return a.rdev != b.rdev
    return False


class _Differ:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.result = DiffResult()

    def _emit(self, path: str, kind: str, old: t.Node | None, new: t.Node | None) -> None:
        self.result.changes.append(Change(path, kind, old, new))
        s = self.result.stats
        if kind == ADDED:
            s.added += 1
        elif kind == REMOVED:
            s.removed += 1
        elif kind == MODIFIED:
            s.modified += 1
        elif kind == METADATA:
            s.metadata += 1
        else:
            s.type_changed += 1

    def tree(self, old_id: HexId, new_id: HexId, prefix: str) -> None:
        old = {n.name: n for n in self.repo.load_tree(old_id)} if old_id else {}
        new = {n.name: n for n in self.repo.load_tree(new_id)} if new_id else {}
        for name in sorted(old.keys() | new.keys()):
            self.pair(f"{prefix}/{name}", old.get(name), new.get(name))

    def pair(self, path: str, a: t.Node | None, b: t.Node | None) -> None:
        if a is None or b is None:
            added = a is None
            node = b if added else a
            assert node is not None
            self._emit(path, ADDED if added else REMOVED, a, b)
            self._count_whole(node, added=added)
            self._below(path, node, added=added)
            return
        if a.type != b.type:
            self._emit(path, TYPE_CHANGED, a, b)
            self._count_whole(a, added=False)
            self._count_whole(b, added=True)
            self._below(path, a, added=False)
            self._below(path, b, added=True)
            return
        if content_differs(a, b):
            self._emit(path, MODIFIED, a, b)
            if a.type == t.FILE:
                self._count_content(a, b)
        elif metadata_differs(a, b):
            self._emit(path, METADATA, a, b)
        if a.type == t.DIR and a.subtree != b.subtree:
            self.tree(a.subtree, b.subtree, path)

    def _below(self, path: str, folder: t.Node, *, added: bool) -> None:
        """Everything below an added or removed folder is added or removed with it."""
        if folder.type != t.DIR or not folder.subtree:
            return
        for sub_path, node in walk(self.repo, folder.subtree, path):
            if added:
                self._emit(sub_path, ADDED, None, node)
            else:
                self._emit(sub_path, REMOVED, node, None)
            self._count_whole(node, added=added)

    def _count_whole(self, node: t.Node, *, added: bool) -> None:
        if node.type != t.FILE:
            return
        if added:
            self.result.stats.bytes_added += node.size
        else:
            self.result.stats.bytes_removed += node.size

    def _count_content(self, a: t.Node, b: t.Node) -> None:
        old, new = Counter(a.content), Counter(b.content)
        self.result.stats.bytes_added += sum(self._raw(h) * n for h, n in (new - old).items())
        self.result.stats.bytes_removed += sum(self._raw(h) * n for h, n in (old - new).items())

    def _raw(self, hex_id: str) -> int:
        loc = self.repo.index.lookup(blob_from_hex(hex_id))
        if loc is None:
            raise IntegrityError(
                f"blob {hex_id[:8]} is not in the index",
                hint="run 'safehold repair index', then 'safehold check'",
            )
        return loc.raw_length
