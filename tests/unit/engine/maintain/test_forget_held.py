"""forget keeps held snapshots (``--keep-id``, the service's held restore points) whatever
its rules say, and refuses to remove one named by id."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehold.crypto.keys import KdfParams
from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.forget import ForgetOptions, run_forget
from safehold.errors import UsageError
from safehold.policy.retention import RetentionPolicy
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.memory import MemoryStorage


def backups(repo: Repository, tmp_path: Path, n: int) -> list[Snapshot]:
    out = []
    for i in range(n):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "f").write_bytes(f"content {i}".encode() * 100)
        out.append(run_backup(repo, BackupOptions(paths=[str(src)], threads=1)).snapshot)
    return out


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryStorage(), b"held test password", kdf=KdfParams(n=1 << 10))


def test_a_held_snapshot_outlives_the_rules(repo: Repository, tmp_path: Path) -> None:
    old, middle, new = backups(repo, tmp_path, 3)
    # One group for all three (their paths differ), so keep-last 1 would keep only `new`.
    opts = ForgetOptions(
        policy=RetentionPolicy(keep_last=1), group_by=(), held=[old.id[:10]], dry_run=True
    )
    planned = run_forget(repo, opts)
    [group] = planned.groups
    assert [s.id for s in group.keep] == [new.id, old.id]  # newest first, held one included
    assert group.reasons[old.id] == ["held"] and [s.id for s in group.remove] == [middle.id]

    opts.dry_run = False
    done = run_forget(repo, opts)
    assert [s.id for s in done.removed] == [middle.id]
    assert sorted(repo.list_snapshot_ids()) == sorted([old.id, new.id])


def test_naming_a_held_snapshot_for_removal_is_refused(repo: Repository, tmp_path: Path) -> None:
    [only] = backups(repo, tmp_path, 1)
    with pytest.raises(UsageError, match="is held") as caught:
        run_forget(repo, ForgetOptions(snapshot_ids=[only.id], held=[only.id]))
    assert caught.value.hint and "release" in caught.value.hint
    assert repo.list_snapshot_ids() == [only.id]  # nothing removed
