"""A restore plans in batches (engine/restore/restore.py, PLAN_BATCH): each batch is restored
before planning goes on, so the plan held at once stays bounded, and the result is the
tree a single plan restores; a pack's blobs are handed out in runs (TICKET_BLOBS)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.progress import Progress
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.engine.restore import restore as restore_mod
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import FAST_KDF, PASSWORD, make_sample_tree
from tests.unit.engine.test_backup_restore import tree_state


class Recording(Progress):
    def __init__(self) -> None:
        self.starts: list[tuple[str, int, int]] = []
        self.items = 0
        self.bytes = 0
        self.lock = threading.Lock()

    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None:
        self.starts.append((phase, total_items, total_bytes))

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        with self.lock:
            self.items += items
            self.bytes += nbytes


def _source(root: Path) -> Path:
    make_sample_tree(root)  # a hard link, a symlink, empty files and folders
    for d in range(4):
        folder = root / f"box{d}"
        folder.mkdir()
        for i in range(9):
            # The same content in every folder: one blob, wanted again by later batches.
            text = "shared\n" * 50 if i == 0 else f"mail {d}-{i}\n" * (20 + i)
            (folder / f"m{i}").write_text(text)
        (folder / "big").write_bytes(os.urandom(1_300_000))  # a file of several blobs
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    storage = LocalStorage(tmp_path / "repo", create=True)
    return Repository.init(storage, PASSWORD, kdf=FAST_KDF, pack_size=64 * 1024)


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.usefixtures("allow_fork")
def test_batches_restore_the_same_tree(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    src = _source(tmp_path / "src")
    snap = run_backup(repo, BackupOptions(paths=[str(src)])).snapshot
    monkeypatch.setattr(restore_mod, "PLAN_BATCH", 8)
    monkeypatch.setattr(restore_mod, "TICKET_BLOBS", 2)
    forks: list[int] = []
    real_fork = restore_mod.run_forked

    def forking(*args: Any, **kw: Any) -> None:
        forks.append(len(args[1]))
        real_fork(*args, **kw)

    monkeypatch.setattr(restore_mod, "run_forked", forking)
    held: list[int] = []  # files planned when each batch was restored
    real = restore_mod._Restorer.restore_planned

    def spy(self: Any, last: bool) -> None:
        held.append(self.planned)
        real(self, last)

    monkeypatch.setattr(restore_mod._Restorer, "restore_planned", spy)
    progress = Recording()
    opts = RestoreOptions(target=str(tmp_path / "out"), processes=processes)
    result = run_restore(repo, snap, opts, progress)

    assert tree_state(tmp_path / "out" / str(src).lstrip("/")) == tree_state(src)
    assert len(held) >= 5 and max(held) <= 8
    # With worker processes, batches are forked out too (each at least 4 tickets of 2).
    assert (len(forks) >= 4) == (processes == 2)
    # Totals are unknown while planning goes on: the bar is told the snapshot's size.
    assert progress.starts == [("restore", 0, snap.summary["total_bytes"])]
    assert (progress.items, progress.bytes) == (result.files, result.bytes)
    assert not result.errors


def test_one_batch_reports_its_totals_first(repo: Repository, tmp_path: Path) -> None:
    src = _source(tmp_path / "src")
    snap = run_backup(repo, BackupOptions(paths=[str(src)])).snapshot
    progress = Recording()
    result = run_restore(repo, snap, RestoreOptions(target=str(tmp_path / "out")), progress)
    assert progress.starts == [("restore", result.files, result.bytes)]
    assert (progress.items, progress.bytes) == (result.files, result.bytes)


def test_a_pack_is_shared_out_in_even_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore_mod, "TICKET_BLOBS", 4)
    r = object.__new__(restore_mod._Restorer)
    many = [(off, 10, 10, bytes(32), []) for off in range(900, -1, -100)]  # 10, unsorted
    few = [(off, 10, 10, bytes(32), []) for off in (300, 0)]
    r.by_pack = {b"p" * 32: many, b"q" * 32: few}
    r.wanted = {}
    work = r.tickets()
    runs = [blobs for pack, blobs in work if pack == b"p" * 32]
    assert sorted(len(b) for b in runs) == [3, 3, 4]
    assert [b[0] for run in sorted(runs, key=lambda b: b[0][0]) for b in run] == list(
        range(0, 1000, 100)
    )
    assert [[b[0] for b in blobs] for pack, blobs in work if pack == b"q" * 32] == [[0, 300]]
    assert [len(b) for _p, b in work] == sorted((len(b) for _p, b in work), reverse=True)
    assert r.by_pack == {}
