"""``restore --dry-run``: what a restore would write, writing nothing.

The preview walks the snapshot's trees with the restore's selection (engine/tree_walk.py) and
lists what the restore would make under the target: the folders it would create (those
the selection takes, and those above what it takes), files, links, FIFOs and devices, with
the same counts the restore reports. Nothing is created, not even the target, and no lock
is taken (restic's dry runs take none): only the index and the trees are read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safehold.engine.restore.restore import RestoreOptions, refuse_nothing_chosen, selection_of
from safehold.engine.tree_walk import Chosen, Selection, Where
from safehold.errors import IntegrityError, ObjectNotFound, UsageError
from safehold.ids import HexId
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot

__all__ = ["PlannedItem", "RestorePreview", "preview_restore"]


@dataclass(frozen=True, slots=True)
class PlannedItem:
    """One item a restore would write, at its path under the target."""

    path: str  # where it would be written
    type: str
    size: int = 0


@dataclass
class RestorePreview:
    """What ``restore --dry-run`` found: the items, counts, and what would not be restored."""

    items: list[PlannedItem] = field(default_factory=list)
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    # (path, why) of what would not be restored: unreadable at backup, damaged trees
    errors: list[tuple[str, str]] = field(default_factory=list)
    damaged: list[tuple[str, str]] = field(default_factory=list)


def preview_restore(repo: Repository, snap: Snapshot, opts: RestoreOptions) -> RestorePreview:
    """What ``run_restore(repo, snap, opts)`` would write, in the order it plans it."""
    selection = selection_of(opts)
    target = os.path.abspath(opts.target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise UsageError(f"restore target {target} exists and is not a folder")
    if not repo.index_loaded:
        repo.load_index()
    walker = _Walker(repo, selection)
    walker.folder(snap.tree, target, selection.root if selection.active else None)
    refuse_nothing_chosen(selection, snap, walker.chosen)
    return walker.out


class _Walker:
    def __init__(self, repo: Repository, selection: Selection) -> None:
        self.repo = repo
        self.selection = selection
        self.out = RestorePreview()
        self.chosen = 0
        self.links: set[tuple[int, int]] = set()

    def folder(
        self,
        tree_id: HexId,
        dest: str,
        where: Where | None,
        emit: Callable[[PlannedItem], None] | None = None,
    ) -> None:
        emit = emit or self.out.items.append
        try:
            nodes: list[dict[str, Any]] = self.repo.load_tree_json(tree_id)
        except (IntegrityError, ObjectNotFound, ValueError, TypeError) as exc:
            why = f"not restored: its tree {str(tree_id)[:8]} cannot be read ({exc})"
            self.out.damaged.append((dest, why))
            self.out.errors.append((dest, why))
            return
        sel = self.selection
        pick = sel.pick(where) if where is not None else None
        for d in nodes:
            name = str(d["name"])
            out = f"{dest.rstrip('/')}/{name}"
            typ = d.get("type")
            if typ == t.DIR:
                below: Where | Chosen | None = None
                if where is not None:
                    chosen, enter, sub = sel.enter(where, name)
                    if not enter:
                        continue
                    below = sel.below(sub, chosen)
                self._sub(d, out, below, emit)
                continue
            if where is not None:
                if pick is not None and not pick(name):
                    continue
                self.chosen += 1
            if typ == t.FILE:
                self._file(d, out, emit)
            elif typ in (t.SYMLINK, t.FIFO, t.CHARDEV, t.BLOCKDEV):
                emit(PlannedItem(out, str(typ)))
            # a socket is not made again by a restore; an unknown type is left out

    def _sub(
        self,
        d: dict[str, Any],
        out: str,
        where: Where | Chosen | None,
        emit: Callable[[PlannedItem], None],
    ) -> None:
        before = self.chosen
        if isinstance(where, Chosen):
            self.chosen += 1
            where = where.where
        held: list[PlannedItem] = []
        dirs = self.out.dirs
        subtree = d.get("subtree", "")
        if subtree:
            self.folder(subtree, out, where, held.append)
        if where is not None and self.chosen == before:
            self.out.dirs = dirs  # nothing taken here or below: not made
            return
        self.out.dirs += 1
        emit(PlannedItem(out, t.DIR))
        for item in held:
            emit(item)

    def _file(self, d: dict[str, Any], out: str, emit: Callable[[PlannedItem], None]) -> None:
        error = d.get("error", "")
        if error:
            self.out.errors.append((out, f"not restored: unreadable at backup ({error})"))
            return
        size = int(d.get("size", 0))
        emit(PlannedItem(out, t.FILE, size))
        if d.get("links", 1) > 1:
            key = (d.get("dev", 0), d.get("inode", 0))
            if key in self.links:
                return  # a hard link to a file already counted
            self.links.add(key)
        self.out.files += 1
        self.out.bytes += size
