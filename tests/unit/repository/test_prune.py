"""Prune against real in-memory repositories: marking, sweeping, rescuing, repacking, chains,
and a backup that runs while prune deletes what it deduplicated against."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from safehold.clock import Clock, FakeClock
from safehold.crypto.keys import KdfParams
from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.forget import ForgetOptions, run_forget
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.errors import IntegrityError, ObjectRetained
from safehold.model import ObjectInfo
from safehold.repository import lock as lockmod
from safehold.repository.check import check_repository
from safehold.repository.format import T_LOCK, seal_object
from safehold.repository.prune import PruneOptions, prune, sweep
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import list_trash, trashed_packs
from safehold.storage.base import Storage
from safehold.storage.memory import MemoryStorage

KDF = KdfParams(n=1 << 10)
PASSWORD = b"prune test password"
NO_SKEW = PruneOptions(lock_skew=timedelta(0))


def make_repo(storage: Storage | None = None, **kw: Any) -> Repository:
    return Repository.init(storage or MemoryStorage(), PASSWORD, kdf=KDF, **kw)


def reopen(repo: Repository, clock: Clock | None = None) -> Repository:
    """A second process's view of the same storage."""
    if clock is None:
        return Repository.open(repo.storage, PASSWORD)
    return Repository.open(repo.storage, PASSWORD, clock=clock)


def backup(repo: Repository, path: Path, **kw: Any) -> Snapshot:
    return run_backup(repo, BackupOptions(paths=[str(path)], threads=2, **kw)).snapshot


def forget(repo: Repository, *snaps: Snapshot) -> None:
    run_forget(repo, ForgetOptions(snapshot_ids=[s.id for s in snaps]))


def listing(repo: Repository) -> dict[str, int]:
    return {o.name: o.size for o in repo.storage.list("")}


def stored_bytes(repo: Repository, prefix: str = "data/") -> int:
    return sum(o.size for o in repo.storage.list(prefix))


def pack_chains(repo: Repository) -> dict[bytes, bytes]:
    """Every stored pack and the chain its own header names."""
    return {p: repo.read_pack_header(p, size).chain_id for p, size in repo.list_packs().items()}


def files_of(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = b"-> " + os.readlink(p).encode()
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = b"<dir>"
    return out


def assert_restores(
    repo: Repository, snap: Snapshot, expected: dict[str, bytes], src: Path, target: Path
) -> None:
    fresh = reopen(repo)
    result = run_restore(fresh, snap, RestoreOptions(target=str(target), threads=2))
    assert not result.errors
    assert files_of(target / str(src).lstrip("/")) == expected


def assert_check_ok(repo: Repository) -> None:
    report = check_repository(reopen(repo))
    assert report.ok, [str(p) for p in report.errors]


def make_files(root: Path, **files: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


# --- marking and sweeping without concurrency ------------------------------------------------


def test_prune_with_nothing_unused_changes_nothing(tmp_path: Path) -> None:
    repo = make_repo()
    src = make_files(tmp_path / "src", a=os.urandom(200_000), b=b"small")
    backup(repo, src)
    (src / "c").write_bytes(os.urandom(1000))
    backup(repo, src)
    before = listing(repo)
    result = prune(repo, NO_SKEW)
    assert listing(repo) == before
    assert result.mark.packs_garbage == result.mark.packs_repacked == 0
    assert result.packs_deleted == 0 and result.bytes_freed == 0


def test_prune_after_forget_frees_space_and_keeps_the_rest_restorable(
    tmp_path: Path, sample_tree: Path
) -> None:
    repo = make_repo()
    first = backup(repo, sample_tree)
    (sample_tree / "sub" / "data.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (sample_tree / "new.txt").write_text("new\n")
    second = backup(repo, sample_tree)
    expected = files_of(sample_tree)
    forget(repo, first)
    before = stored_bytes(repo)

    result = prune(repo)

    assert result.packs_deleted > 0
    after = stored_bytes(repo)
    assert after == before - result.bytes_freed + result.mark.bytes_written
    assert after < before - 3 * 1024 * 1024
    assert result.packs_pending == 0 and list_trash(repo) == []
    assert_restores(repo, second, expected, sample_tree, tmp_path / "restored")
    assert_check_ok(repo)
    # A second prune finds nothing more to do.
    again = prune(repo)
    assert again.packs_deleted == 0 and again.mark.packs_garbage == 0


def test_dry_run_deletes_nothing_and_reports_the_plan(tmp_path: Path, sample_tree: Path) -> None:
    repo = make_repo()
    first = backup(repo, sample_tree)
    (sample_tree / "sub" / "data.bin").write_bytes(os.urandom(1024 * 1024))
    backup(repo, sample_tree)
    forget(repo, first)
    before = listing(repo)

    plan = prune(repo, PruneOptions(dry_run=True))

    assert listing(repo) == before
    assert plan.dry_run and plan.mark.packs_garbage + plan.mark.packs_repacked > 0
    assert plan.bytes_freed > 3 * 1024 * 1024
    real = prune(repo)
    assert real.bytes_freed == plan.bytes_freed
    assert real.packs_deleted == plan.packs_deleted


def test_prune_stops_without_deleting_when_a_snapshot_needs_a_missing_blob(
    tmp_path: Path,
) -> None:
    repo = make_repo()
    src = make_files(tmp_path / "src", a=os.urandom(100_000))
    old = backup(repo, src)
    (src / "a").write_bytes(os.urandom(100_000))
    backup(repo, src)
    forget(repo, old)
    # Damage: an index file goes missing, so a live snapshot's blobs are in no index.
    for name in repo.list_index_files():
        repo.storage.delete(name)
    before = listing(repo)
    with pytest.raises(IntegrityError, match="no pack holds"):
        prune(repo, NO_SKEW)
    assert listing(repo) == before


# --- the two-phase delete with other processes about ------------------------------------------


def test_sweep_waits_for_older_locks_and_proceeds_once_they_are_gone(tmp_path: Path) -> None:
    clock = FakeClock()
    repo = make_repo(clock=clock)
    src = make_files(tmp_path / "src", a=os.urandom(300_000))
    old = backup(repo, src)
    (src / "a").write_bytes(os.urandom(300_000))
    backup(repo, src)
    forget(repo, old)
    other = reopen(repo, clock)
    older = other.lock("backup")  # a process that may have loaded the old index
    clock.advance(1)

    first = prune(repo, NO_SKEW)

    assert first.mark.packs_garbage > 0 and first.packs_deleted == 0
    assert first.swept.records_waiting == 1
    assert any("backup lock" in d for d in first.swept.waiting_for)
    pending = trashed_packs(repo)
    assert pending and pending <= set(repo.list_packs())
    assert first.packs_pending == len(pending)

    clock.advance(1)
    newer = other.lock("backup")  # started after the old index was gone
    clock.advance(1)
    still = prune(repo, NO_SKEW)
    assert still.packs_deleted == 0 and trashed_packs(repo) == pending

    older.release()
    # The newer lock is only 1 s younger than the record: inside a 5 minute skew margin.
    skewed = prune(repo, PruneOptions(lock_skew=timedelta(minutes=5)))
    assert skewed.packs_deleted == 0 and trashed_packs(repo) == pending

    done = prune(repo, NO_SKEW)
    newer.release()
    assert done.earlier.packs_deleted == len(pending)
    assert not pending & set(repo.list_packs())
    assert list_trash(repo) == []
    assert_check_ok(repo)


def test_a_stale_lock_does_not_hold_back_the_sweep_and_is_removed(tmp_path: Path) -> None:
    clock = FakeClock()
    repo = make_repo(clock=clock)
    src = make_files(tmp_path / "src", a=os.urandom(100_000))
    old = backup(repo, src)
    (src / "a").write_bytes(os.urandom(100_000))
    backup(repo, src)
    forget(repo, old)
    held = reopen(repo, clock).lock("backup")
    clock.advance(1)
    marked = prune(repo, NO_SKEW)
    assert marked.packs_deleted == 0 and marked.packs_pending > 0
    held.release()
    # A process that died on this host while holding a lock older than the record.
    info = lockmod.LockInfo(
        name="locks/" + "ab" * 16,
        created=clock.now() - timedelta(minutes=1),
        refreshed=clock.now() - timedelta(minutes=1),
        hostname=socket.gethostname(),
        pid=_dead_pid(),
        exclusive=False,
        kind="backup",
        holder=lockmod.this_holder(),  # this kernel and PID namespace: the PID decides
    )
    repo.storage.put(info.name, seal_object(repo.aead, T_LOCK, json.dumps(info.to_json()).encode()))

    result = sweep(repo, lock_skew=timedelta(0))

    assert result.stale_locks_removed == 1
    assert result.packs_deleted == marked.packs_pending and result.records_waiting == 0
    assert list(repo.storage.list("locks/")) == []
    assert list_trash(repo) == []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_trashed_pack_listed_by_an_index_again_is_kept(tmp_path: Path) -> None:
    clock = FakeClock()
    repo = make_repo(clock=clock)
    src = make_files(tmp_path / "src", a=os.urandom(300_000), b=os.urandom(300_000))
    old = backup(repo, src)
    (src / "a").write_bytes(os.urandom(1000))
    (src / "b").write_bytes(os.urandom(1000))
    backup(repo, src)
    forget(repo, old)
    held = reopen(repo, clock).lock("backup")
    clock.advance(1)
    prune(repo, NO_SKEW)
    pending = trashed_packs(repo)
    assert len(pending) >= 2
    # A backup that listed the trash before the record existed adopts one of the packs.
    adopted = sorted(pending)[0]
    size = repo.list_packs()[adopted]
    repo.write_index([repo.read_pack_header(adopted, size)])
    held.release()

    with repo.lock("prune") as own:
        result = sweep(repo, own_lock=own.info.name, lock_skew=timedelta(0))

    assert result.packs_readopted == 1
    assert result.packs_deleted == len(pending) - 1
    assert set(repo.list_packs()) & pending == {adopted}
    assert list_trash(repo) == []
    assert_check_ok(repo)


class HookedStorage:
    """A real storage that calls ``hook`` once, just before (or after) the first object
    whose name starts with ``prefix`` is stored: a way to run another process's step at an
    exact point of this one."""

    def __init__(
        self, inner: Storage, prefix: str, hook: Callable[[], None], *, after: bool = False
    ) -> None:
        self.inner = inner
        self.prefix = prefix
        self.hook: Callable[[], None] | None = hook
        self.after = after

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        hook = None
        if name.startswith(self.prefix) and self.hook is not None:
            hook, self.hook = self.hook, None
        if hook is not None and not self.after:
            hook()
        self.inner.put(name, data, exclusive=exclusive)
        if hook is not None and self.after:
            hook()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


class Gate:
    """Holds a thread at :meth:`wait_here` until the test opens it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    def wait_here(self) -> None:
        self.reached.set()
        assert self.release.wait(60), "the test never opened the gate"


def test_a_backup_running_during_prune_keeps_the_data_it_deduplicated(
    tmp_path: Path, sample_tree: Path
) -> None:
    storage = MemoryStorage()
    repo = make_repo(storage, pack_size=256 * 1024)
    first = backup(repo, sample_tree)
    expected = files_of(sample_tree)
    gate = Gate()
    # The backup stops when it has decided everything, just before it stores its snapshot.
    backup_repo = Repository.open(HookedStorage(storage, "snapshots/", gate.wait_here), PASSWORD)
    outcome: dict[str, Any] = {}

    def concurrent_backup() -> None:
        try:
            # Parent = `first`, same chain: every file is unchanged and every blob is
            # deduplicated against the packs that prune is about to mark.
            outcome["snap"] = backup(backup_repo, sample_tree)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=concurrent_backup)
    thread.start()
    try:
        assert gate.reached.wait(60), "the backup never reached its snapshot"
        forget(repo, first)  # nothing references the data any more ...
        marked = prune(repo, NO_SKEW)  # ... so prune marks all of it
        assert marked.mark.packs_garbage == marked.mark.packs > 0
        assert marked.packs_deleted == 0, "prune deleted packs a running backup needs"
        assert marked.swept.records_waiting == 1
    finally:
        gate.release.set()
        thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    second: Snapshot = outcome["snap"]
    assert second.chain == first.chain and second.summary["blobs_new"] == 0
    trashed = trashed_packs(repo)
    assert trashed and trashed <= set(repo.list_packs())

    swept = prune(repo, NO_SKEW)

    assert swept.earlier.packs_rescued == len(trashed)
    assert swept.packs_deleted == 0 and list_trash(repo) == []
    assert trashed <= set(repo.list_packs())
    assert_restores(repo, second, expected, sample_tree, tmp_path / "restored")
    assert_check_ok(repo)


# --- repacking and chains -----------------------------------------------------------------


def test_mostly_unused_packs_are_repacked_and_snapshots_still_restore(tmp_path: Path) -> None:
    repo = make_repo()
    src = make_files(tmp_path / "src", big=os.urandom(400_000), small=b"kept\n" * 100)
    old = backup(repo, src)
    (src / "big").unlink()
    kept = backup(repo, src)
    expected = files_of(src)
    forget(repo, old)
    repo.load_index()
    mixed = {
        p
        for p, rec in repo.index.packs.items()
        if any(e.raw_length == 400_000 for e in rec.entries)
    }
    assert len(mixed) == 1

    untouched = prune(repo, PruneOptions(max_unused=100, lock_skew=timedelta(0)))
    assert untouched.mark.packs_repacked == 0
    assert mixed <= set(repo.list_packs())

    before = stored_bytes(repo)
    result = prune(repo, NO_SKEW)

    assert result.mark.packs_repacked >= 1 and result.mark.blobs_repacked >= 1
    assert result.mark.packs_written >= 1
    assert not mixed & set(repo.list_packs())
    assert stored_bytes(repo) < before - 300_000
    assert_restores(repo, kept, expected, src, tmp_path / "restored")
    assert_check_ok(repo)


def test_forgetting_a_chain_frees_its_packs_and_keeps_another_chains_copy(
    tmp_path: Path, sample_tree: Path
) -> None:
    repo = make_repo()
    chained = backup(repo, sample_tree)
    isolated = backup(repo, sample_tree, isolated=True)
    expected = files_of(sample_tree)
    assert chained.chain != isolated.chain
    chains = pack_chains(repo)
    gone_chain, kept_chain = bytes.fromhex(chained.chain), bytes.fromhex(isolated.chain)
    kept_packs = {p for p, c in chains.items() if c == kept_chain}
    assert kept_packs and any(c == gone_chain for c in chains.values())
    forget(repo, chained)

    result = prune(repo)

    after = pack_chains(repo)
    assert result.packs_deleted == len(chains) - len(kept_packs)
    assert set(after) == kept_packs
    assert_restores(repo, isolated, expected, sample_tree, tmp_path / "restored")
    assert_check_ok(repo)


def test_an_index_written_during_prune_survives_and_its_snapshot_is_rescued(
    tmp_path: Path,
) -> None:
    storage = MemoryStorage()
    repo = make_repo(storage)
    old_content = os.urandom(300_000)
    src = make_files(tmp_path / "src", a=old_content)
    old = backup(repo, src)
    (src / "a").write_bytes(os.urandom(300_000))
    backup(repo, src)
    forget(repo, old)
    outcome: dict[str, Snapshot] = {}

    def backup_meanwhile() -> None:
        # Runs after prune loaded the index and marked, just before it writes its trash
        # record: the old index files still list the packs prune marked.
        (src / "a").write_bytes(old_content)  # deduplicates against a marked pack
        (src / "c").write_bytes(os.urandom(50_000))  # new data: a new pack and index file
        outcome["snap"] = backup(Repository.open(storage, PASSWORD), src)

    pruning = Repository.open(HookedStorage(storage, "trash/", backup_meanwhile), PASSWORD)

    result = prune(pruning, NO_SKEW)

    new = outcome["snap"]
    expected = files_of(src)
    assert new.summary["blobs_new"] >= 1
    assert result.swept.packs_rescued >= 1, "the pack the new snapshot needs was not rescued"
    assert result.packs_pending == 0 and list_trash(repo) == []
    assert_restores(repo, new, expected, src, tmp_path / "restored")
    assert_check_ok(repo)


class RetainingStorage(MemoryStorage):
    """Refuses to delete packs while ``retain`` is set, as S3 Object Lock does."""

    def __init__(self) -> None:
        super().__init__()
        self.retain = False

    def delete(self, name: str) -> None:
        if self.retain and name.startswith("data/"):
            raise ObjectRetained(f"cannot delete {name!r}: under retention")
        super().delete(name)


def test_packs_under_retention_stay_in_the_trash_until_a_later_prune(
    tmp_path: Path, sample_tree: Path
) -> None:
    store = RetainingStorage()
    repo = make_repo(store)
    first = backup(repo, sample_tree)
    (sample_tree / "sub" / "data.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    second = backup(repo, sample_tree)
    expected = files_of(sample_tree)
    forget(repo, first)
    store.retain = True
    before = stored_bytes(repo)

    held = prune(repo, NO_SKEW)

    assert held.swept.packs_retained > 0 and held.swept.bytes_retained > 0
    assert held.packs_deleted == 0 and held.bytes_freed == 0
    assert stored_bytes(repo) >= before  # nothing of the old data went
    assert list_trash(repo) != []  # the record keeps naming the retained packs
    assert_restores(repo, second, expected, sample_tree, tmp_path / "r1")
    assert_check_ok(repo)

    store.retain = False  # the retention period is over
    freed = prune(repo, NO_SKEW)
    assert freed.packs_deleted >= held.swept.packs_retained
    assert list_trash(repo) == [] and freed.packs_pending == 0
    assert stored_bytes(repo) < before
    assert_restores(repo, second, expected, sample_tree, tmp_path / "r2")
    assert_check_ok(repo)
