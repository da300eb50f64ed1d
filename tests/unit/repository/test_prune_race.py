"""The exact races between a backup and a prune, made deterministic by pausing one of them
at the step that matters: a snapshot is complete the moment it is listed, whatever prune
does meanwhile (docs/format.md, "Prune")."""

from __future__ import annotations

import io
import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.forget import ForgetOptions, run_forget
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.errors import SnapshotNotFound
from safehold.policy.retention import RetentionPolicy
from safehold.repository.check import check_repository
from safehold.repository.prune import PruneOptions, prune
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import list_trash, trashed_packs
from safehold.storage.memory import MemoryStorage
from tests.conftest import FAST_KDF, PASSWORD

NO_SKEW = PruneOptions(lock_skew=timedelta(0))


class GatedStream(io.RawIOBase):
    """``data``, then a pause at the end until the test opens the gate: the backup has
    chunked and deduplicated everything and waits, with its lock held, to finish."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.reached = threading.Event()
        self.release = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._data.readinto(buf)
        if n == 0:
            self.reached.set()
            assert self.release.wait(60), "the test never opened the gate"
        return n


class GatedBackup:
    """A stream backup of ``data`` in a thread, paused at the end of its stream (with its
    lock held and every chunk decided) until :meth:`finish`."""

    def __init__(self, repo: Repository, data: bytes) -> None:
        self.stream = GatedStream(data)
        self.outcome: dict[str, Any] = {}
        opened = Repository.open(repo.storage, PASSWORD)  # as a separate process would
        self.thread = threading.Thread(target=self._run, args=(opened,))
        self.thread.start()
        assert self.stream.reached.wait(60), self.outcome

    def _run(self, repo: Repository) -> None:
        try:
            self.outcome["snap"] = stream_backup(repo, self.stream)
        except BaseException as exc:
            self.outcome["error"] = exc

    def release(self) -> None:
        self.stream.release.set()
        self.thread.join(60)

    def finish(self) -> Snapshot:
        self.release()
        assert "error" not in self.outcome, self.outcome.get("error")
        snap: Snapshot = self.outcome["snap"]
        return snap


def stream_backup(repo: Repository, data: bytes | io.RawIOBase) -> Snapshot:
    stdin = io.BytesIO(data) if isinstance(data, bytes) else data
    opts = BackupOptions(stdin_name="db.dump", stdin=stdin, threads=2)  # type: ignore[arg-type]
    return run_backup(repo, opts).snapshot


def restored(repo: Repository, snap: Snapshot, target: Path) -> bytes:
    fresh = Repository.open(repo.storage, PASSWORD)
    result = run_restore(fresh, snap, RestoreOptions(target=str(target), threads=2))
    assert not result.errors
    return (target / "db.dump").read_bytes()


def assert_check_ok(repo: Repository) -> None:
    report = check_repository(Repository.open(repo.storage, PASSWORD))
    assert report.ok, [str(p) for p in report.errors]


def test_a_snapshot_saved_while_prune_trashes_its_data_is_complete_at_once(
    tmp_path: Path,
) -> None:
    # The review's reproduction: a dump, a tiny dump, then a third backup that reuses the
    # first's data while `forget --keep-last 1 --prune` runs.
    repo = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024)
    data = os.urandom(3 * 1024 * 1024)
    stream_backup(repo, data)
    stream_backup(repo, b"tiny")
    third = GatedBackup(repo, data)
    try:
        policy = RetentionPolicy(keep_last=1)
        forgot = run_forget(repo, ForgetOptions(policy=policy))
        assert sum(len(g.remove) for g in forgot.groups) == 1
        marked = prune(repo, NO_SKEW)
        assert marked.mark.packs_garbage > 0
        assert marked.packs_deleted == 0, "prune deleted data a running backup uses"
    finally:
        third.release()
    snap = third.finish()
    assert snap.summary["data_added"] < 10_000  # every chunk deduplicated: only its tree
    assert trashed_packs(repo)  # ... against packs that are now in the trash

    # Listed, so complete: before any later prune rescues anything.
    assert restored(repo, snap, tmp_path / "now") == data
    assert_check_ok(repo)

    later = prune(repo, NO_SKEW)
    assert later.packs_rescued > 0  # (the first dump's own tree is freed)
    assert list_trash(repo) == []
    assert restored(repo, snap, tmp_path / "later") == data
    assert_check_ok(repo)


def test_a_backup_that_starts_after_the_trash_record_keeps_off_trashed_packs(
    tmp_path: Path,
) -> None:
    # A backup whose lock is younger than a trash record does not hold back the sweep, so
    # it must not deduplicate against the record's packs: it uploads the data again.
    repo = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024)
    data = os.urandom(2 * 1024 * 1024)
    first = stream_backup(repo, data)
    held = Repository.open(repo.storage, PASSWORD).lock("backup")  # keeps the record waiting
    run_forget(repo, ForgetOptions(snapshot_ids=[first.id]))
    prune(repo, NO_SKEW)
    held.release()
    trashed = trashed_packs(repo)
    assert trashed

    late = GatedBackup(repo, data)
    try:
        # The late backup's lock is younger than the record: the sweep deletes at once.
        swept = prune(repo, PruneOptions(lock_skew=timedelta(0)))
        assert swept.earlier.records_swept == 1
        assert not trashed & set(repo.list_packs())
    finally:
        late.release()
    snap = late.finish()
    assert snap.summary["data_added"] >= len(data)
    assert restored(repo, snap, tmp_path / "out") == data
    assert_check_ok(repo)


def test_a_reader_whose_pack_is_swept_reads_the_copy_written_since(tmp_path: Path) -> None:
    # A restore plans from its index, in which a snapshot's data is only in a trashed pack;
    # a backup then writes a live copy, and the sweep deletes the trashed pack (every
    # snapshot's blob is listed elsewhere now). The restore reads the live copy.
    repo = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024)
    data = os.urandom(1024 * 1024)
    first = stream_backup(repo, data)
    during = GatedBackup(repo, data)
    run_forget(repo, ForgetOptions(snapshot_ids=[first.id]))
    prune(repo, NO_SKEW)  # the first snapshot's packs go to the trash; the sweep waits
    snap = during.finish()  # complete, its data only in trashed packs
    trashed = trashed_packs(repo)
    assert trashed

    reader = Repository.open(repo.storage, PASSWORD)
    reader.load_index()  # knows the data only in the trashed packs
    stream_backup(Repository.open(repo.storage, PASSWORD), data + b"!")  # a live copy
    swept = prune(repo, NO_SKEW)
    gone = trashed - set(repo.list_packs())
    assert swept.earlier.packs_deleted == len(gone) > 0  # packs the reader's plan names

    target = tmp_path / "out"
    result = run_restore(reader, snap, RestoreOptions(target=str(target), threads=2))
    assert not result.errors
    assert (target / "db.dump").read_bytes() == data


def test_a_reader_finds_a_snapshot_forgotten_before_its_lock_gone(tmp_path: Path) -> None:
    repo = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF)
    snap = stream_backup(repo, b"data")
    run_forget(repo, ForgetOptions(snapshot_ids=[snap.id]))
    with pytest.raises(SnapshotNotFound, match="forgotten"):
        run_restore(repo, snap, RestoreOptions(target=str(tmp_path / "out")))
