"""Restore workers in forked processes (engine/restore/workers.py): the same files as with
threads, every pack exactly once, progress forwarded, and a child's failure raised in the
parent with its own type and message."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.progress import Progress
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.engine.restore import workers as restore_procs
from safehold.errors import IntegrityError, SafeholdError, TargetError
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from safehold.storage.memory import MemoryStorage
from tests.conftest import FAST_KDF, PASSWORD, make_sample_tree
from tests.unit.engine.test_backup_restore import tree_state

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform"),
    pytest.mark.usefixtures("allow_fork"),  # as the command line allows (safehold.runtime)
]


class Counting(Progress):
    def __init__(self) -> None:
        self.items = 0
        self.bytes = 0
        self.lock = threading.Lock()

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        with self.lock:
            self.items += items
            self.bytes += nbytes


@pytest.fixture
def small_packs(tmp_path: Path) -> Repository:
    """Packs of 256 KiB: even a small tree spreads over many of them."""
    storage = LocalStorage(tmp_path / "repo", create=True)
    return Repository.init(storage, PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024)


def _source(root: Path) -> Path:
    make_sample_tree(root)
    for i in range(60):  # many one-blob files
        (root / f"small-{i}.txt").write_text(f"file {i}\n" * (100 + 50 * i))
    big = os.urandom(2_500_000)
    (root / "big").write_bytes(big)  # several blobs, in several packs
    (root / "big-copy").write_bytes(big)
    with open(root / "sparse", "wb") as f:
        f.truncate(4_000_000)
        f.seek(1_500_001)
        f.write(os.urandom(1_200_000))
    return root


def test_the_same_tree_as_with_threads(
    small_packs: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source(tmp_path / "src")
    snap = run_backup(small_packs, BackupOptions(paths=[str(src)])).snapshot
    forked: list[int] = []
    real = restore_procs.run_forked

    def spy(*args: object, **kw: object) -> None:
        forked.append(1)
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("safehold.engine.restore.restore.run_forked", spy)
    progress = Counting()
    result = run_restore(
        small_packs, snap, RestoreOptions(target=str(tmp_path / "p"), processes=2), progress
    )
    assert forked == [1]
    in_threads = Counting()
    threads = run_restore(small_packs, snap, RestoreOptions(target=str(tmp_path / "t")), in_threads)
    rel = str(src).lstrip("/")
    assert tree_state(tmp_path / "p" / rel) == tree_state(src)
    assert tree_state(tmp_path / "t" / rel) == tree_state(src)
    assert (result.files, result.bytes) == (threads.files, threads.bytes)
    for p in (progress, in_threads):
        assert (p.items, p.bytes) == (result.files, result.bytes)


def test_a_damaged_pack_fails_the_restore_with_its_error(
    small_packs: Repository, tmp_path: Path
) -> None:
    src = _source(tmp_path / "src")
    snap = run_backup(small_packs, BackupOptions(paths=[str(src)])).snapshot
    packs = sorted((tmp_path / "repo" / "data").rglob("*"))
    victim = max((p for p in packs if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF  # inside the first blob
    os.chmod(victim, 0o644)
    victim.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError) as err:
        run_restore(small_packs, snap, RestoreOptions(target=str(tmp_path / "p"), processes=2))
    assert "damaged" in str(err.value) or "does not match" in str(err.value)


def _packs(n: int) -> list[tuple[bytes, int]]:
    return [(bytes([k]), k) for k in range(n)]


def test_every_pack_once_and_progress_forwarded(tmp_path: Path) -> None:
    progress = Counting()
    sink: Progress = progress  # the parent's own workers report straight to it
    # No pack is done before each of the three processes holds one (a barrier shared
    # through the fork), so every process gets some however the scheduler runs them. A
    # process's first pack waits at the barrier, its other thread behind it, so the others
    # hold at most four of the 40 tickets while waiting. Were a process missing, the wait
    # times out and the count of process ids below says so.
    everyone = multiprocessing.get_context("fork").Barrier(3)
    arrived: set[int] = set()
    first = threading.Lock()
    here = threading.Event()  # in each process's own copy: its first pack passed the barrier

    def work(pack_id: bytes, k: int) -> None:
        with first:
            mine = os.getpid() not in arrived
            arrived.add(os.getpid())
        if mine:
            with contextlib.suppress(threading.BrokenBarrierError):
                everyone.wait(timeout=30)
            here.set()
        here.wait(timeout=30)
        (tmp_path / f"{k}-{os.getpid()}").touch()
        sink.advance(1, k)

    def setup(p: Progress) -> None:
        nonlocal sink
        sink = p

    restore_procs.run_forked(work, _packs(40), 3, progress, setup)
    done = sorted(int(p.name.split("-")[0]) for p in tmp_path.iterdir())
    assert done == list(range(40))
    assert (progress.items, progress.bytes) == (40, sum(range(40)))
    assert len({p.name.split("-")[1] for p in tmp_path.iterdir()}) == 3  # three processes


@pytest.mark.parametrize("error", [TargetError("disk full", hint="free space"), ValueError("bug")])
def test_a_childs_error_is_raised_in_the_parent(error: Exception) -> None:
    parent = os.getpid()

    def work(pack_id: bytes, k: int) -> None:
        time.sleep(0.01)
        if os.getpid() != parent:
            raise error

    with pytest.raises(SafeholdError) as got:
        restore_procs.run_forked(work, _packs(8), 2, Progress(), lambda p: None)
    if isinstance(error, TargetError):
        assert type(got.value) is TargetError
        assert (got.value.message, got.value.hint) == ("disk full", "free space")
    else:
        assert "ValueError: bug" in str(got.value)


def test_the_parents_own_error_ends_the_children(tmp_path: Path) -> None:
    parent = os.getpid()

    def work(pack_id: bytes, k: int) -> None:
        time.sleep(0.01)
        if os.getpid() == parent:
            raise TargetError("parent failed")
        (tmp_path / str(k)).touch()

    with pytest.raises(TargetError, match="parent failed"):
        restore_procs.run_forked(work, _packs(200), 2, Progress(), lambda p: None)
    assert len(list(tmp_path.iterdir())) < 199  # the child did not go on to the end


def test_a_child_that_dies_is_reported() -> None:
    parent = os.getpid()

    def work(pack_id: bytes, k: int) -> None:
        time.sleep(0.01)
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(SafeholdError, match=r"ended unexpectedly.*signal 9"):
        restore_procs.run_forked(work, _packs(4), 2, Progress(), lambda p: None)


def test_no_fork_over_a_storage_with_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A child would share the parent's sockets (HTTP pools, SSH channels) and read replies
    # meant for it; only backends that say fork_safe get worker processes.
    mem_repo = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024)
    src = _source(tmp_path / "src")
    snap = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot

    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("forked over a storage that is not fork-safe")

    monkeypatch.setattr("safehold.engine.restore.restore.run_forked", refuse)
    run_restore(mem_repo, snap, RestoreOptions(target=str(tmp_path / "p"), processes=2))
    assert tree_state(tmp_path / "p" / str(src).lstrip("/")) == tree_state(src)


def test_small_restores_stay_in_threads() -> None:
    assert not restore_procs.usable(2, 3)
    assert restore_procs.usable(2, 4)
    assert not restore_procs.usable(1, 100)
