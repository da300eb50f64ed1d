"""forget and prune over a storage that refuses to delete retained objects (the immutable
mode), played by the shipped FaultyStorage raising ObjectRetained as S3 Object Lock does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from safehold.crypto.keys import KdfParams
from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.forget import ForgetOptions, run_forget
from safehold.errors import ObjectRetained
from safehold.policy.retention import RetentionPolicy
from safehold.repository.check import check_repository
from safehold.repository.prune import PruneOptions, prune
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import FaultyStorage

KDF = KdfParams(n=1 << 10)
PASSWORD = b"retained test password"
UNTIL = datetime(2031, 1, 2, 3, 4, tzinfo=UTC)


def retained(name: str) -> ObjectRetained:
    return ObjectRetained(f"cannot delete {name!r}: retained", until=UNTIL)


def backups(repo: Repository, tmp_path: Path, n: int) -> list[Snapshot]:
    out = []
    for i in range(n):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "f").write_bytes(f"content {i}".encode() * 1000)
        out.append(run_backup(repo, BackupOptions(paths=[str(src)], threads=2)).snapshot)
    return out


def test_forget_reports_a_retained_snapshot_and_goes_on(tmp_path: Path) -> None:
    storage = FaultyStorage(MemoryStorage())
    repo = Repository.init(storage, PASSWORD, kdf=KDF)
    old, middle, new = backups(repo, tmp_path, 3)
    storage.fail_always("delete", retained(old.id), match=f"snapshots/{old.id}")

    result = run_forget(repo, ForgetOptions(snapshot_ids=[old.id, middle.id]))
    assert [s.id for s in result.removed] == [middle.id]
    assert [(r.snapshot.id, r.until) for r in result.retained] == [(old.id, UNTIL)]
    assert sorted(repo.list_snapshot_ids()) == sorted([old.id, new.id])
    assert check_repository(repo).ok

    # Once the period is over, the same forget removes it.
    storage.clear()
    again = run_forget(repo, ForgetOptions(snapshot_ids=[old.id]))
    assert [s.id for s in again.removed] == [old.id] and again.retained == []
    assert repo.list_snapshot_ids() == [new.id]


def test_forget_by_policy_with_every_snapshot_retained(tmp_path: Path) -> None:
    storage = FaultyStorage(MemoryStorage())
    repo = Repository.init(storage, PASSWORD, kdf=KDF)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / "f").write_bytes(f"version {i}".encode())
        run_backup(repo, BackupOptions(paths=[str(src)], threads=2))
    storage.fail_always("delete", retained("a snapshot"), match="snapshots/")
    result = run_forget(repo, ForgetOptions(policy=RetentionPolicy(keep_last=1)))
    assert result.removed == [] and len(result.retained) == 2
    assert len(repo.list_snapshot_ids()) == 3


def test_prune_keeps_retained_index_files_and_succeeds(tmp_path: Path) -> None:
    """Prune deletes the index files it loaded; under retention they stay (they only
    repeat entries) and the run goes on. (Before prune caught ObjectRetained there, the
    first retained index file stopped it with exit 5.)"""
    storage = FaultyStorage(MemoryStorage())
    repo = Repository.init(storage, PASSWORD, kdf=KDF)
    first, _second = backups(repo, tmp_path, 2)
    run_forget(repo, ForgetOptions(snapshot_ids=[first.id]))
    storage.fail_always("delete", retained("an index file"), match="index/")
    storage.fail_always("delete", retained("a pack"), match="data/")
    result = prune(repo, PruneOptions(lock_skew=timedelta(0)))
    assert result.mark.packs_garbage >= 1
    assert result.mark.index_files_retained >= 1
    # The retained index files stay (they only repeat entries), the run succeeds, and
    # the repository is sound.
    assert check_repository(Repository.open(repo.storage, PASSWORD)).ok
    storage.clear()
    later = prune(Repository.open(repo.storage, PASSWORD), PruneOptions(lock_skew=timedelta(0)))
    assert later.packs_deleted >= 1
