"""The decoded-tree cache is bounded in nodes, not only in trees: a walk of many folders of
many files must not keep the whole snapshot in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.tree_walk import walk
from safehold.repository import repository as repository_module
from safehold.repository.repository import Repository

FOLDERS, FILES = 12, 10


def cached_nodes(repo: Repository) -> int:
    return sum(len(nodes) for nodes in repo._tree_cache.values())


@pytest.fixture
def walked(mem_repo: Repository, tmp_path: Path) -> tuple[Repository, str]:
    data = tmp_path / "data"
    for i in range(FOLDERS):
        folder = data / f"box{i:02d}"
        folder.mkdir(parents=True)
        for j in range(FILES):
            (folder / f"m{j}").write_text(f"mail {i} {j}\n")
    snap = run_backup(mem_repo, BackupOptions(paths=[str(data)], threads=2)).snapshot
    return mem_repo, snap.tree


def test_a_walk_keeps_at_most_the_node_budget(
    walked: tuple[Repository, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, root = walked
    monkeypatch.setattr(repository_module, "TREE_CACHE_NODES", 25)
    paths = [path for path, _node in walk(repo, root)]
    assert sum(p.rsplit("/", 1)[-1].startswith("m") for p in paths) == FOLDERS * FILES
    # Every folder's tree was decoded (10 nodes each), but at most 25 nodes stay: two trees.
    assert 0 < cached_nodes(repo) <= 25
    assert repo._tree_cache_nodes == cached_nodes(repo)
    assert len(repo._tree_cache) == 2


def test_a_cached_tree_is_served_again_and_a_huge_one_is_not_kept(
    walked: tuple[Repository, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, root = walked
    monkeypatch.setattr(repository_module, "TREE_CACHE_NODES", 1_000)
    top = repo.load_tree(root)
    assert repo.load_tree(root) is top  # a hit: the same decoded list
    monkeypatch.setattr(repository_module, "TREE_CACHE_NODES", FILES - 1)
    repo._tree_cache.clear()
    repo._tree_cache_nodes = 0
    box = next(node for node in walk(repo, root) if node[0].endswith("/box00"))[1]
    assert box.subtree is not None
    nodes = repo.load_tree(box.subtree)
    assert len(nodes) == FILES  # larger than the budget: decoded, returned, not kept
    assert box.subtree not in repo._tree_cache
    assert repo._tree_cache_nodes == cached_nodes(repo) <= FILES - 1
