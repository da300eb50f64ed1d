"""``backup --dry-run``: what a backup of folders would save, without saving anything.

The preview walks exactly as a backup does (engine/backup/plan.py: the same exclusions, the
same comparison with the parent snapshot), but reads no file and writes nothing to the
repository: no pack, no index, no snapshot, and no lock, as restic's dry run. It reads the
index and the parent's trees, so a prune running meanwhile may delete a parent tree it
is about to read: that folder is then shown as if it had no parent (new), never as an
error.

It does not chunk what it would read, so it cannot say how much of that data the
repository already holds: ``bytes_to_read`` is what the backup would read, an upper bound
of what it would add.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safehold.engine.backup.backup import (
    BackupOptions,
    _choose_chain,
    _resolve_paths,
    excluder_for,
    refuse_excluded_paths,
)
from safehold.engine.backup.plan import DirItem, DirPlan, Item, Planner, TextItem, root_plan
from safehold.engine.backup.prescan import Prescan
from safehold.engine.progress import NO_PROGRESS, Progress
from safehold.errors import IntegrityError, ObjectNotFound, UsageError
from safehold.ids import HexId, chain_from_hex
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.trash import writer_view

__all__ = ["BackupPreview", "PreviewItem", "preview_backup"]


@dataclass(frozen=True, slots=True)
class PreviewItem:
    """One item a backup would save, and whether it is new, changed or unchanged."""

    path: str
    type: str
    status: str  # "new", "changed" or "unchanged", against the parent snapshot
    size: int = 0


@dataclass
class BackupPreview:
    """What ``backup --dry-run`` found: the parent it compared with, the items, unreadable
    paths and the counts."""

    parent: str | None
    items: list[PreviewItem] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)


def preview_backup(
    repo: Repository,
    opts: BackupOptions,
    progress: Progress = NO_PROGRESS,
    *,
    prescan: Prescan | None = None,
) -> BackupPreview:
    """What ``run_backup(repo, opts)`` would save: every item, in snapshot order."""
    if opts.stdin_name or opts.command or opts.streams is not None:
        raise UsageError(
            "--dry-run shows what a backup of folders and files would save; a stream has "
            "nothing to show before it is read"
        )
    if not opts.paths:
        raise UsageError("nothing to back up: give paths")
    paths = _resolve_paths(opts.paths)
    refuse_excluded_paths(paths, excluder_for(opts, progress.warn))
    host = opts.host or socket.gethostname()
    writer_view(repo)  # the index as a backup sees it: reads only
    parent, chain, _seq = _choose_chain(repo, opts, host, paths)

    def load_tree(tree_id: HexId) -> list[dict[str, Any]]:
        try:
            return repo.load_tree_json(tree_id)
        except ObjectNotFound as exc:  # swept by a prune meanwhile: as if no parent
            raise IntegrityError(str(exc)) from exc

    planner = Planner(
        index=repo.index,
        chain=chain_from_hex(chain),
        load_tree=load_tree,
        excluder=excluder_for(opts, progress.warn),
        one_file_system=opts.one_file_system,
        force=opts.force,
        prescan=prescan,
    )
    progress.start("scan")
    root = root_plan(planner, parent.tree if parent else None)
    if paths == ["/"]:
        planner.walk("/", root, os.lstat("/").st_dev, t.Node(name="", type=t.DIR))
    else:
        for path in paths:
            planner.place(root, path)
    progress.finish()
    for path, msg in planner.errors:
        progress.warn(path, msg)
    out = BackupPreview(parent.id if parent else None, errors=list(planner.errors))
    _list(root, "", out.items.append, load_tree)
    out.summary = {
        "files_new": planner.files_new,
        "files_changed": planner.files_changed,
        "files_unchanged": planner.files_unchanged,
        "dirs": sum(1 for i in out.items if i.type == t.DIR),
        "total_bytes": planner.bytes,
        "bytes_to_read": sum(node.size for _path, node in planner.jobs),
    }
    return out


def _list(
    plan: DirPlan,
    prefix: str,
    emit: Callable[[PreviewItem], None],
    load_tree: Callable[[HexId], list[dict[str, Any]]],
) -> bool:
    """Emit the items of ``plan`` (a folder before what it holds); True if any of them is
    new or changed. Without a save_tree the walk keeps parsed nodes: no TextItem here."""
    before: set[str] = set()
    if plan.parent_subtree:
        try:
            before = {str(n["name"]) for n in load_tree(plan.parent_subtree)}
        except IntegrityError:
            pass
    changed = plan.parent_count != len(plan.items)
    for item in sorted(plan.items, key=_name):
        name = _name(item)
        path = f"{prefix}/{name}"
        if isinstance(item, DirItem):
            below: list[PreviewItem] = []
            inner = _list(item.plan, path, below.append, load_tree)
            same = isinstance(item.meta, dict) and not inner
            status = "unchanged" if same else "changed" if name in before else "new"
            emit(PreviewItem(path, t.DIR, status))
            for x in below:
                emit(x)
        elif isinstance(item, dict):
            status = "unchanged"
            emit(PreviewItem(path, str(item.get("type")), status, int(item.get("size", 0))))
        else:
            assert isinstance(item, t.Node)
            status = "changed" if name in before else "new"
            emit(PreviewItem(path, item.type, status, item.size))
        changed = changed or status != "unchanged"
    return changed


def _name(item: Item) -> str:
    if isinstance(item, TextItem):
        return item.name
    if isinstance(item, DirItem):
        return str(item.meta["name"] if isinstance(item.meta, dict) else item.meta.name)
    return str(item["name"] if isinstance(item, dict) else item.name)
