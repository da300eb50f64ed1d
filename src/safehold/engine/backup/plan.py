"""Walking the folders to back up against the parent snapshot.

The walk stats everything (it reads no content) and compares each item with the parent
snapshot's node of the same name, working on the parent's JSON objects directly: an item
whose type, size, inode, mtime and ctime are unchanged keeps its parent node as is (ctime
moves on any content, mode, owner or link change, so equal ctimes mean equal metadata).
A folder whose items are all unchanged keeps the parent's tree id and is not encoded
again. That is what makes a backup with few changes cost little more than the stats.

Extended attributes and ACLs (engine/xattrs.py) are read for new and changed items only
(those of tiny files by the process that reads them, where there is one: ``attrs_by_reader``);
setting one moves the item's ctime, so an unchanged item's parent node has them right,
provided the parent snapshot read the same kinds (``attrs_in_parent``). When it did not (a
parent made before they were stored, or with other ``--no-xattrs``/``--no-acls``), each
unchanged item's attributes are read once and its node kept if they agree.

The result is a plan: the folders' items, and the files that must be read, which the
backup reads in parallel while the walk goes on (``on_job``).

A folder's tree is saved as soon as nothing in it is left to read, as restic does:
``DirPlan.pending`` counts the folder's files still to read, its sub-folders not yet saved
and, while the walk is in the folder, the walk itself; whoever counts it down to zero (the
walk leaving the folder, or the reader thread that read its last file) saves the tree and
counts down the folder above. Only folders still waiting for a read hold their nodes, so a
first backup no longer keeps every new file's node until the end (200,000 files: 350 MB
peak before). Trees are the same bytes whenever they are saved: a tree's id depends on its
nodes, not on the order of saving.
"""

from __future__ import annotations

import operator
import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from safehold.engine import xattrs as xa
from safehold.engine.backup.prescan import Entry, Prescan
from safehold.engine.backup.scan import Excluder, StatLike, node_from_stat
from safehold.engine.backup.vanished import VANISHED, Vanished
from safehold.errors import IntegrityError
from safehold.ids import NO_HEX_ID, ChainId, HexId, blob_from_hex
from safehold.repository import tree as t
from safehold.repository.index import Index

JsonNode = dict[str, Any]
SaveTree = Callable[[bytes], HexId]  # (outside Planner, whose ``bytes`` field shadows the type)

_KIND = {
    stat.S_IFDIR: t.DIR,
    stat.S_IFREG: t.FILE,
    stat.S_IFLNK: t.SYMLINK,
    stat.S_IFIFO: t.FIFO,
    stat.S_IFCHR: t.CHARDEV,
    stat.S_IFBLK: t.BLOCKDEV,
    stat.S_IFSOCK: t.SOCKET,
}
_BY_NAME = operator.attrgetter("name")


@dataclass(eq=False, slots=True)
class DirItem:
    """A folder in a plan: its own node (the parent's, or new) and the plan of its contents."""

    meta: JsonNode | t.Node  # the folder's own node: reused from the parent, or new
    plan: DirPlan
    # The folder's node once its tree is saved (``folder_node``): set by whichever thread
    # counted the folder's ``pending`` down to zero; its plan's items are dropped then.
    saved: JsonNode | None = None


@dataclass(eq=False, slots=True)
class TextItem:
    """An unchanged node kept as its canonical JSON text (``tree.node_json``): a folder
    that must wait for file contents holds its unchanged items this way, at about a
    quarter of the memory of the parsed objects, until its tree is saved."""

    name: str
    text: str


Item = JsonNode | t.Node | DirItem | TextItem


@dataclass(eq=False, slots=True)
class DirPlan:
    """One folder's plan during the walk: its items in name order, the parent's tree to compare
    with, and how many of its items are still being read or saved."""

    items: list[Item] = field(default_factory=list)
    parent_subtree: HexId = NO_HEX_ID
    parent_count: int = -1  # items in the parent's tree; -1 = no parent tree
    named: dict[str, Item] = field(default_factory=dict)  # for placing backup paths
    # Files still to read and sub-folders not yet saved, in this folder, plus one while
    # the walk is in it (set in Planner.item): counted under Planner's lock.
    pending: int = 0
    changed: bool = False  # a sub-folder saved during the walk differs from the parent's
    up: DirPlan | None = None  # the folder above, when this folder is saved on its own
    own: DirItem | None = None  # this folder's item in ``up``


@dataclass(eq=False)
class Planner:
    """One walk. ``load_tree`` returns a parent tree's JSON nodes by id."""

    index: Index
    chain: ChainId
    load_tree: Any
    excluder: Excluder
    one_file_system: bool
    force: bool = False
    # The files to read, kept only without ``on_job`` (a preview); with it, only counted.
    jobs: list[tuple[str, t.Node]] = field(default_factory=list)
    to_read: int = 0
    to_read_bytes: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    files_unchanged: int = 0
    files_changed: int = 0
    files_new: int = 0
    # Saves a finished folder's tree; set, folders are saved as soon as nothing in them is
    # left to read, so the walk holds only the folders still waiting for file contents.
    save_tree: SaveTree | None = None
    # Called with each file to read and its folder's plan as soon as the walk finds it
    # (reading may start then); the reader calls ``file_read(plan)`` once it is read.
    on_job: Callable[[str, t.Node, DirPlan], None] | None = None
    # Folders listed ahead of the walk (engine/backup/prescan.py), taken as the walk reaches them.
    prescan: Prescan | None = None
    # Folders that vanished during the backup, shared with the readers (one error each).
    vanished: Vanished = field(default_factory=Vanished)
    # The extended attributes to save, and whether the parent snapshot saved the same
    # kinds (xattrs.kinds): only then are its nodes of unchanged items kept unread.
    attrs: xa.Choice = field(default_factory=xa.Choice)
    attrs_in_parent: bool = False
    # New and changed files of at most this many bytes get their attributes from the
    # process that reads them (engine/backup/tiny_procs.py), not from the walk; -1: none.
    attrs_by_reader: int = -1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _folder: DirPlan | None = None  # the plan of the folder the walk is in

    def _parent_plan(self, old: JsonNode | None) -> DirPlan:
        if old is None or old.get("type") != t.DIR or not old.get("subtree") or self.force:
            return DirPlan()
        try:
            nodes = self.load_tree(old["subtree"])
        except IntegrityError:
            # A parent tree that is damaged or hostile (docs/format.md, "Trees") is not
            # trusted for anything: this folder is backed up as if it had no parent.
            return DirPlan()
        plan = DirPlan(parent_subtree=old["subtree"], parent_count=len(nodes))
        plan.named = {n["name"]: n for n in nodes}  # parent nodes until replaced
        plan.changed = not self.reusable(old["subtree"])
        return plan

    def reusable(self, tree_id: HexId) -> bool:
        """Whether a parent's tree may be named again as it is: only if stored in this
        chain and not in prune's trash (the index leaves trashed packs out), like every
        blob a backup references without writing it."""
        return self.index.has_in_chain(blob_from_hex(tree_id), self.chain)

    def _in_chain(self, content: list[HexId]) -> bool:
        return self.index.has_all_in_chain(content, self.chain)

    def item(self, path: str, name: str, st: StatLike, old: JsonNode | None, dev: int) -> Item:
        """Plan one item found at ``path`` (already stat-ed)."""
        kind = _KIND.get(stat.S_IFMT(st.st_mode), t.SOCKET)
        same_meta = (
            old is not None
            and old.get("type") == kind
            and old.get("mtime") == st.st_mtime_ns
            and old.get("ctime") == st.st_ctime_ns
            and not old.get("error")
            and not self.force
        )
        if kind == t.FILE:
            self.files += 1
            self.bytes += st.st_size
            if (
                same_meta
                and old is not None
                and old.get("size") == st.st_size
                and old.get("inode") == st.st_ino
                and self._in_chain(old.get("content", []))
            ):
                self.files_unchanged += 1
                return old if self.attrs_in_parent else self._kept(path, old)
            node = self._new(name, st, path, attrs=st.st_size > self.attrs_by_reader)
            if old is None:
                self.files_new += 1
            else:
                self.files_changed += 1
            self.to_read += 1
            self.to_read_bytes += node.size
            folder = self._folder
            if folder is not None:
                with self._lock:  # before the job is queued: its reader counts it down
                    folder.pending += 1
            if self.on_job is None:
                self.jobs.append((path, node))
            else:
                assert folder is not None
                self.on_job(path, node, folder)
            return node
        if kind == t.DIR:
            self.dirs += 1
            meta: JsonNode | t.Node = (
                self._same(path, old)
                if same_meta and old is not None
                else self._new(name, st, path)
            )
            plan = self._parent_plan(old)
            item = DirItem(meta, plan)
            folder = self._folder
            if folder is not None:
                plan.up, plan.own = folder, item
                with self._lock:
                    folder.pending += 1  # counted down once this folder is saved
            plan.pending = 1  # held until the walk below is done with it
            if not (self.one_file_system and st.st_dev != dev):
                self.walk(path, plan, st.st_dev, meta)
            self._release(plan)
            return item
        if same_meta and old is not None:
            return self._same(path, old)
        return self._new(name, st, path)

    def _new(self, name: str, st: StatLike, path: str, *, attrs: bool = True) -> t.Node:
        """The node of a new or changed item, with its extended attributes (unless
        ``attrs`` is off: its reader reads them)."""
        node = node_from_stat(name, st, path)
        if attrs and self.attrs.any:
            node.xattrs, problem = xa.read(path, self.attrs)
            if problem:
                self.errors.append((path, xa.not_saved(problem)))
        return node

    def _same(self, path: str, old: JsonNode) -> JsonNode | t.Node:
        return old if self.attrs_in_parent else self._kept(path, old)

    def _kept(self, path: str, old: JsonNode) -> JsonNode | t.Node:
        """An unchanged item's parent node, when the parent did not save the attributes
        this backup saves: kept if they agree, else a new node with this backup's."""
        if self.attrs.any:
            attrs, problem = xa.read(path, self.attrs)
            if problem:
                self.errors.append((path, xa.not_saved(problem)))
        elif "xattrs" not in old:
            return old
        else:
            attrs = t.NO_XATTRS
        if (t.encode_xattrs(attrs) if attrs else {}) == old.get("xattrs", {}):
            return old
        # (the parent's attributes are not decoded: they are replaced)
        node = t.Node.from_json({k: v for k, v in old.items() if k != "xattrs"})
        node.xattrs = attrs
        return node

    def walk(self, path: str, plan: DirPlan, dev: int, meta: JsonNode | t.Node) -> None:
        """Fill ``plan`` with the items of the folder at ``path``."""
        outer, self._folder = self._folder, plan
        try:
            self._walk(path, plan, dev, meta)
        finally:
            self._folder = outer

    # One function on purpose: it runs once per item of every folder, and each call split
    # out of it costs a measurable share of a no-change backup.
    def _walk(self, path: str, plan: DirPlan, dev: int, meta: JsonNode | t.Node) -> None:
        parent_nodes = plan.named
        plan.named = {}
        listed = self.prescan.take(path) if self.prescan is not None else None
        try:
            if listed is not None:
                entries: list[os.DirEntry[str]] | list[Entry] = listed
            else:
                with os.scandir(path) as it:
                    # In name order, as restic and borg walk, not the file system's (hash order
                    # on ext4): files are found, read and reported in the same order on every
                    # run. On the benchmark data the hash order also found the two large changed
                    # dumps last, so their reads ran alone after the walk (a 5 % re-backup
                    # took 2.02 s, median of 11; 1.84 s in name order).
                    entries = sorted(it, key=_BY_NAME)
        except OSError as exc:
            msg = exc.strerror or str(exc)
            gone = self.vanished.folder_of(os.path.join(path, ""), exc)
            if gone is None:
                self.errors.append((path, msg))
            elif gone[1]:
                self.errors.append((gone[0], VANISHED))
            if isinstance(meta, t.Node):
                meta.error = msg
            plan.parent_count = -1
            return
        # Excludes (engine/backup/scan.py): a test of names for this folder, None if none applies.
        skip = self.excluder.folder(path, entries) if self.excluder.active else None
        big = self.excluder.max_size
        for de in entries:
            if skip is not None and skip(de.name):
                continue
            try:
                st = de.stat(follow_symlinks=False)
                if big is not None and st.st_size > big and not stat.S_ISDIR(st.st_mode):
                    continue
                old = parent_nodes.get(de.name)
                item = self.item(de.path, de.name, st, old if isinstance(old, dict) else None, dev)
            except OSError as exc:
                gone = self.vanished.folder_of(de.path, exc)
                if gone is None:
                    self.errors.append((de.path, exc.strerror or str(exc)))
                    continue
                if gone[1]:
                    self.errors.append((gone[0], VANISHED))
                break  # the rest of this folder is gone too
            plan.items.append(item)
        if plan.pending > 1 and self.save_tree is not None:
            # This folder waits for reads (beyond the walk's own hold): its unchanged nodes
            # (the parent tree's parsed objects, most of a re-backup's memory) and its
            # sub-folders saved already wait as text instead.
            plan.items = [self._waiting(plan, x) for x in plan.items]

    @staticmethod
    def _waiting(plan: DirPlan, item: Item) -> Item:
        if isinstance(item, dict):
            return TextItem(str(item["name"]), t.node_json(item))
        if isinstance(item, DirItem) and item.saved is not None:
            if item.saved is not item.meta:
                plan.changed = True  # (a TextItem counts as unchanged in build_tree)
            return TextItem(str(item.saved["name"]), t.node_json(item.saved))
        return item

    def file_read(self, plan: DirPlan) -> None:
        """A reader read a file that ``on_job`` gave it, from the folder of ``plan``."""
        self._release(plan)

    def files_read(self, plans: Sequence[DirPlan]) -> None:
        """:meth:`file_read` for several files (their folders, one per file), counted down
        under one hold of the lock: the tiny-file children's answers come in batches."""
        emptied = []
        with self._lock:
            for plan in plans:
                plan.pending -= 1
                if not plan.pending:
                    emptied.append(plan)
        for plan in emptied:
            self._release(self._saved(plan))

    def _release(self, plan: DirPlan | None) -> None:
        """Count down ``plan``'s pending; a folder left with nothing pending is saved, then
        the folder above counted down, and so on up. Folders without ``own`` (the root,
        the folders above a backup path) are left to the final ``build_tree``."""
        while plan is not None:
            with self._lock:
                plan.pending -= 1
                if plan.pending:
                    return
            plan = self._saved(plan)

    def _saved(self, plan: DirPlan) -> DirPlan | None:
        """Save the folder of ``plan``, which has nothing pending; the folder above, to
        count down next (None: left to the final ``build_tree``)."""
        own, save = plan.own, self.save_tree
        if own is None or save is None or plan.up is None:
            return None
        own.saved = folder_node(own.meta, build_tree(save, plan))
        plan.items = []  # their nodes are in the saved tree now
        plan.named = {}
        return plan.up

    def place(self, root: DirPlan, path: str) -> None:
        """Add the backup path ``path`` (absolute) to the virtual root, creating the folders
        above it as in the file system (with only the backed-up items inside)."""
        parts = [p for p in path.split("/") if p]
        plan = root
        prefix = ""
        for i, part in enumerate(parts):
            prefix += "/" + part
            existing = plan.named.get(part)
            if isinstance(existing, DirItem) and i < len(parts) - 1:
                plan = existing.plan
                continue
            if existing is not None and not isinstance(existing, dict):
                return  # already inside a path being backed up
            st = os.lstat(prefix)
            old = existing if isinstance(existing, dict) else None
            if i == len(parts) - 1:
                outer, self._folder = self._folder, plan
                try:
                    item = self.item(prefix, part, st, old, st.st_dev)
                finally:
                    self._folder = outer
            else:
                same = (
                    old is not None
                    and old.get("type") == t.DIR
                    and old.get("mtime") == st.st_mtime_ns
                    and old.get("ctime") == st.st_ctime_ns
                )
                meta: JsonNode | t.Node = (
                    self._same(prefix, old)
                    if same and old is not None
                    else self._new(part, st, prefix)
                )
                item = DirItem(meta, self._parent_plan(old))
            plan.items = [x for x in plan.items if _name(x) != part]
            plan.items.append(item)
            plan.named[part] = item
            if not isinstance(item, DirItem):
                return
            plan = item.plan


def _name(item: Item) -> str:
    if isinstance(item, TextItem):
        return item.name
    if isinstance(item, DirItem):
        return str(item.meta["name"] if isinstance(item.meta, dict) else item.meta.name)
    return str(item["name"] if isinstance(item, dict) else item.name)


def root_plan(planner: Planner, parent_root: HexId | None) -> DirPlan:
    """The virtual root: the parent's root nodes are the starting point for matching."""
    if parent_root is None or planner.force:
        return DirPlan()
    try:
        nodes = planner.load_tree(parent_root)
    except IntegrityError:
        return DirPlan()  # damaged or hostile: as if there were no parent (see _parent_plan)
    # Only the placed paths end up in the new root; the parent's other nodes are dropped.
    plan = DirPlan(parent_subtree=parent_root, parent_count=len(nodes))
    plan.named = {n["name"]: n for n in nodes}
    plan.changed = not planner.reusable(parent_root)
    return plan


def folder_node(meta: JsonNode | t.Node, subtree: HexId) -> JsonNode:
    """A folder's node pointing at ``subtree``: the parent's node itself if it already did."""
    if isinstance(meta, dict) and meta.get("subtree") == subtree:
        return meta
    d = dict(meta) if isinstance(meta, dict) else meta.to_json()
    d["subtree"] = subtree
    return d


def build_tree(save_tree: SaveTree, plan: DirPlan) -> HexId:
    """Save the trees of ``plan`` bottom-up (folders saved already are their ``saved``
    nodes or plain nodes by now); an unchanged folder keeps its parent's tree id and is
    not encoded again."""
    out: list[JsonNode | TextItem] = []
    same = plan.parent_count == len(plan.items) and not plan.changed
    for item in plan.items:
        if isinstance(item, (dict, TextItem)):  # an unchanged node (maybe already text)
            out.append(item)
        elif isinstance(item, DirItem):
            node = item.saved
            if node is None:
                node = folder_node(item.meta, build_tree(save_tree, item.plan))
            out.append(node)
            if node is not item.meta:
                same = False
        else:
            out.append(item.to_json())
            same = False
    if same:
        return plan.parent_subtree
    parts = [
        (x.name, x.text) if isinstance(x, TextItem) else (str(x["name"]), t.node_json(x))
        for x in out
    ]
    return save_tree(t.encode_tree_parts(parts))
