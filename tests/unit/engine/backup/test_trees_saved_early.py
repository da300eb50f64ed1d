"""A folder's tree is saved as soon as its files are read (plan.py, DirPlan.pending), and
the snapshot is the same as when every tree waited for the end of the backup."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.backup.plan import DirItem, DirPlan, Planner, build_tree
from safehold.engine.backup.scan import Excluder
from safehold.repository import tree as t
from safehold.repository.index import Index
from safehold.repository.repository import Repository
from tests.conftest import make_sample_tree


def _tree(root: Path) -> Path:
    """Folders with files, only sub-folders, nothing, and a big file among small ones."""
    make_sample_tree(root)
    rnd = random.Random(5)
    for i in range(6):
        d = root / "mail" / f"box{i}" / "cur"
        d.mkdir(parents=True)
        for j in range(8):
            (d / f"m{j}").write_bytes(rnd.randbytes(rnd.randrange(0, 5000)))
    (root / "mail" / "box2" / "empty").mkdir()
    (root / "only-folders" / "a" / "b").mkdir(parents=True)
    (root / "mail" / "box4" / "cur" / "big").write_bytes(rnd.randbytes(1_500_000))
    return root


def _snapshot_tree(repo: Repository, src: Path, *, early: bool, **kw: object) -> str:
    with pytest.MonkeyPatch.context() as mp:
        if not early:
            # Readers no longer count folders down: every tree is built at the end, bottom
            # up, as before trees were saved early.
            mp.setattr(Planner, "file_read", lambda self, plan: None)
        opts = BackupOptions(paths=[str(src)], **kw)  # type: ignore[arg-type]
        return run_backup(repo, opts).snapshot.tree


def test_trees_saved_early_give_the_same_snapshot(mem_repo: Repository, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    first = _snapshot_tree(mem_repo, src, early=True, isolated=True)
    assert _snapshot_tree(mem_repo, src, early=False, isolated=True) == first
    assert _snapshot_tree(mem_repo, src, early=True, force=True, isolated=True) == first
    # Against a parent: unchanged items kept as text, changed ones read again.
    (src / "mail" / "box1" / "cur" / "m3").write_bytes(b"changed")
    (src / "mail" / "box5" / "cur" / "new").write_bytes(b"new")
    os.remove(src / "mail" / "box0" / "cur" / "m0")
    parent = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot
    (src / "mail" / "box3" / "cur" / "m1").write_bytes(b"changed again")
    late = _snapshot_tree(mem_repo, src, early=False, parent=parent.id)
    assert _snapshot_tree(mem_repo, src, early=True, parent=parent.id) == late
    assert late != parent.tree


def test_a_folder_is_saved_once_its_last_file_is_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("a", "b"):
        (src / name).mkdir(parents=True)
        for leaf in ("x", "y"):
            (src / name / leaf).write_text(name + leaf)
    (src / "c" / "d").mkdir(parents=True)
    saved: list[bytes] = []
    jobs: list[tuple[str, DirPlan]] = []

    def save_tree(raw: bytes) -> str:
        saved.append(raw)
        return f"{len(saved):064x}"

    planner = Planner(
        index=Index(),
        chain=b"",
        load_tree=None,
        excluder=Excluder([]),
        one_file_system=False,
        save_tree=save_tree,
        on_job=lambda path, node, folder: jobs.append((path, folder)),
    )
    root = DirPlan()
    planner.walk(str(src), root, os.lstat(src).st_dev, t.Node(name="", type=t.DIR))
    assert planner.jobs == []  # fed to on_job, not kept
    assert (planner.to_read, planner.to_read_bytes) == (4, 8)
    # Only the folders without files to read are saved during the walk: c/d, then c.
    assert [t.decode_tree_json(raw) == [] for raw in saved] == [True, False]
    by_path = dict(jobs)
    planner.file_read(by_path[str(src / "a" / "x")])
    assert len(saved) == 2
    planner.file_read(by_path[str(src / "a" / "y")])
    assert len(saved) == 3  # a
    assert [n["name"] for n in t.decode_tree_json(saved[-1])] == ["x", "y"]
    planner.file_read(by_path[str(src / "b" / "x")])
    planner.file_read(by_path[str(src / "b" / "y")])
    assert len(saved) == 4  # b; the root is left to build_tree
    assert root.pending == 0
    # c, saved during the walk, waits as text; a and b as their saved nodes.
    assert [type(x).__name__ for x in root.items] == ["DirItem", "DirItem", "TextItem"]
    assert all(x.saved is not None for x in root.items if isinstance(x, DirItem))
    assert build_tree(save_tree, root) == f"{len(saved):064x}"
    assert len(saved) == 5
    assert [n["name"] for n in t.decode_tree_json(saved[-1])] == ["a", "b", "c"]
