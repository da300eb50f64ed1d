"""Prune removes the temporary files of interrupted writes, but never one a live writer may
still be writing: only files older than an hour and than every live lock go."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from safehold.crypto.keys import KdfParams
from safehold.repository import lock as lockmod
from safehold.repository.format import T_LOCK, seal_object
from safehold.repository.prune import PruneOptions, prune, remove_stale_temp_files
from safehold.repository.repository import Repository
from safehold.storage.local import TEMP_PREFIX, LocalStorage
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import LimitedStorage, RetryingStorage

KDF = KdfParams(n=1 << 10)
PASSWORD = b"temp file test password"
HOUR = 3600


def plant(root: Path, name: str, age_seconds: float) -> Path:
    path = root / "data" / "ab" / f"{TEMP_PREFIX}{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a pack")
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


def live_lock(repo: Repository, created_ago: timedelta) -> None:
    """A shared backup lock of a live process (this one), refreshed just now."""
    now = datetime.now(UTC)
    info = lockmod.LockInfo(
        name="locks/" + "7" * 64,
        created=now - created_ago,
        refreshed=now,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        exclusive=False,
        kind="backup",
        holder=lockmod.this_holder(),
    )
    raw = seal_object(repo.aead, T_LOCK, json.dumps(info.to_json()).encode())
    repo.storage.put(info.name, raw)


def wrapped_repo(root: Path) -> Repository:
    # As the composition root builds it: the cleaner must be found under the wrappers.
    storage = RetryingStorage(LimitedStorage(LocalStorage(root, create=True), 4))
    return Repository.init(storage, PASSWORD, kdf=KDF)


def test_prune_removes_old_temp_files_only(tmp_path: Path) -> None:
    repo = wrapped_repo(tmp_path)
    old = plant(tmp_path, "old", 48 * HOUR)
    fresh = plant(tmp_path, "fresh", 0)
    recent = plant(tmp_path, "recent", 10 * 60)

    result = prune(repo, PruneOptions(lock_skew=timedelta(0)))

    assert result.temp_files_removed == 1
    assert not old.exists()
    assert fresh.exists() and recent.exists()
    assert result.to_json()["temp_files_removed"] == 1


def test_a_live_lock_protects_files_written_since_it_was_taken(tmp_path: Path) -> None:
    repo = wrapped_repo(tmp_path)
    live_lock(repo, created_ago=timedelta(hours=3))
    before_lock = plant(tmp_path, "before-lock", 4 * HOUR)
    # Older than the minimum age, but written after the live lock was taken: its writer
    # may be that process, stalled mid-write.
    under_lock = plant(tmp_path, "under-lock", 2 * HOUR)
    within_skew = plant(tmp_path, "within-skew", 3 * HOUR + 60)

    removed = remove_stale_temp_files(repo, lock_skew=timedelta(minutes=5))

    assert removed == 1
    assert not before_lock.exists()
    assert under_lock.exists() and within_skew.exists()


def test_stale_locks_do_not_protect_anything(tmp_path: Path) -> None:
    repo = wrapped_repo(tmp_path)
    now = datetime.now(UTC)
    info = lockmod.LockInfo(
        name="locks/" + "8" * 64,
        created=now - timedelta(hours=5),
        refreshed=now - timedelta(hours=5),  # not refreshed for hours: its process is gone
        hostname="elsewhere",
        pid=1,
        exclusive=False,
        kind="backup",
    )
    repo.storage.put(info.name, seal_object(repo.aead, T_LOCK, json.dumps(info.to_json()).encode()))
    old = plant(tmp_path, "old", 2 * HOUR)

    assert remove_stale_temp_files(repo, lock_skew=timedelta(0)) == 1
    assert not old.exists()


def test_dry_run_and_storage_without_temp_files(tmp_path: Path) -> None:
    repo = wrapped_repo(tmp_path)
    old = plant(tmp_path, "old", 48 * HOUR)
    assert prune(repo, PruneOptions(dry_run=True)).temp_files_removed == 0
    assert old.exists()

    memory = Repository.init(MemoryStorage(), PASSWORD, kdf=KDF)
    assert remove_stale_temp_files(memory) == 0
    assert prune(memory).temp_files_removed == 0
