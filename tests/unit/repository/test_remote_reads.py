"""Opening and walking a repository in few storage round trips (remote stores are slow
per request): whole tree packs are cached, index files and snapshots fetched in parallel."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.errors import ObjectNotFound
from safehold.repository.repository import Repository, fetch_each, pack_name
from safehold.storage.memory import MemoryStorage
from tests.conftest import FAST_KDF, PASSWORD


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.gets.append(name)
        return super().get(name, offset, length)


def _many_folders(root: Path, n: int) -> Path:
    for i in range(n):
        d = root / f"d{i:03}" / "inner"
        d.mkdir(parents=True)
        (d / "f.txt").write_text(f"file {i}\n")
    return root


def test_walking_a_parent_reads_each_tree_pack_once(tmp_path: Path) -> None:
    store = CountingStorage()
    repo = Repository.init(store, PASSWORD, kdf=FAST_KDF)
    src = _many_folders(tmp_path / "src", 60)
    run_backup(repo, BackupOptions(paths=[str(src)]))
    again = Repository.open(store, PASSWORD)
    store.gets.clear()
    run_backup(again, BackupOptions(paths=[str(src)]))  # a re-backup walks the parent
    tree_pack_reads = [n for n in store.gets if n.startswith("data/")]
    # 120+ folders, but their trees share a pack or two: one read per pack.
    assert 1 <= len(tree_pack_reads) <= 3, tree_pack_reads
    assert len(set(tree_pack_reads)) == len(tree_pack_reads)


def test_a_damaged_cached_tree_pack_is_read_again(tmp_path: Path) -> None:
    store = CountingStorage()
    repo = Repository.init(store, PASSWORD, kdf=FAST_KDF)
    snap = run_backup(repo, BackupOptions(paths=[str(_many_folders(tmp_path / "s", 3))])).snapshot
    loc = repo.index.lookup(bytes.fromhex(snap.tree))
    assert loc is not None
    # Poison the cache with a damaged copy of the pack, as a bad read would leave it.
    good = store.get(pack_name(loc.pack_id))
    bad = bytearray(good)
    bad[loc.offset + 20] ^= 1
    repo._tree_packs[loc.pack_id] = bytes(bad)
    repo._tree_cache.clear()
    assert repo.load_tree(snap.tree)  # read again from storage, verified
    assert loc.pack_id not in repo._tree_packs


def test_fetch_each_keeps_order_bounds_the_window_and_returns_errors() -> None:
    names = [f"n{i}" for i in range(50)]
    running = 0
    peak = 0
    lock = threading.Lock()

    def fetch(name: str) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002)
        with lock:
            running -= 1
        if name == "n7":
            raise ObjectNotFound("gone")
        return name.upper()

    got = list(fetch_each(names, fetch, workers=4))
    assert [n for n, _ in got] == names
    assert isinstance(got[7][1], ObjectNotFound)
    assert [v for n, v in got if n != "n7"] == [n.upper() for n in names if n != "n7"]
    assert 1 < peak <= 4


def test_fetch_each_lets_bugs_propagate() -> None:
    def broken(name: str) -> str:
        raise ValueError(name)

    with pytest.raises(ValueError):
        list(fetch_each(["a", "b"], broken))
