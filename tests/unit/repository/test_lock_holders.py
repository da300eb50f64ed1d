"""Who holds a lock, and when clocks may be trusted: a lock is stale because its process is
gone only when it was taken on this kernel, in this PID namespace; prune refuses to delete
when this machine's clock and the storage's disagree by more than its margin."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from safehold.clock import FakeClock
from safehold.errors import ClockSkew
from safehold.repository import lock as lockmod
from safehold.repository.format import T_LOCK, seal_object
from safehold.repository.prune import PruneOptions, check_clock, prune
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from safehold.storage.memory import MemoryStorage
from tests.conftest import FAST_KDF, PASSWORD


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return proc.pid
    pytest.skip("the PID was reused at once")


def lock_info(pid: int, holder: lockmod.Holder, clock: FakeClock | None = None) -> lockmod.LockInfo:
    now = (clock or FakeClock()).now()
    return lockmod.LockInfo(
        name="locks/" + os.urandom(16).hex(),
        created=now,
        refreshed=now,
        hostname=socket.gethostname(),
        pid=pid,
        exclusive=False,
        kind="backup",
        holder=holder,
    )


def test_a_lock_of_this_kernel_and_namespace_with_a_dead_pid_is_stale() -> None:
    info = lock_info(dead_pid(), lockmod.this_holder())
    assert lockmod.is_stale(info, info.refreshed)


def test_a_lock_of_another_pid_namespace_is_judged_by_its_refresh_time_only() -> None:
    # Two containers with one host name: the same PID number means nothing across them.
    other_ns = replace(lockmod.this_holder(), pid_ns="pid:[4026539999]")
    info = lock_info(dead_pid(), other_ns)
    assert not lockmod.is_stale(info, info.refreshed)
    assert lockmod.is_stale(info, info.refreshed + timedelta(seconds=lockmod.STALE_SECONDS + 1))


def test_a_lock_of_another_boot_is_judged_by_its_refresh_time_only() -> None:
    info = lock_info(dead_pid(), replace(lockmod.this_holder(), boot_id="another-boot"))
    assert not lockmod.is_stale(info, info.refreshed)


def test_a_lock_without_holder_fields_is_judged_by_its_refresh_time_only() -> None:
    # Written before the fields existed (or by a holder that could not tell).
    info = lock_info(dead_pid(), lockmod.Holder())
    assert not lockmod.is_stale(info, info.refreshed)


def test_a_reused_pid_does_not_keep_a_dead_holders_lock_alive() -> None:
    # The PID runs (it is ours), but it is not the process that took the lock: that one
    # started at another time.
    mine = lockmod.this_holder()
    info = lock_info(os.getpid(), replace(mine, start=mine.start + 12345))
    assert lockmod.is_stale(info, info.refreshed)
    assert not lockmod.is_stale(lock_info(os.getpid(), mine), info.refreshed)


def test_a_lock_records_its_holder_and_reads_back() -> None:
    storage = MemoryStorage()
    repo = Repository.init(storage, PASSWORD, kdf=FAST_KDF)
    with repo.lock("backup") as held:
        [info] = lockmod.list_locks(storage, repo.aead)
        assert info.holder == held.info.holder == lockmod.this_holder()
        assert info.holder.boot_id and info.holder.pid_ns and info.holder.start > 0
        assert not lockmod.is_stale(info, repo.clock.now())


def test_unreadable_locks_exclude_nobody_and_unlock_removes_them() -> None:
    storage = MemoryStorage()
    repo = Repository.init(storage, PASSWORD, kdf=FAST_KDF)
    storage.put("locks/" + "0" * 32, b"junk")
    good = lock_info(os.getpid(), lockmod.this_holder())
    raw = bytearray(seal_object(repo.aead, T_LOCK, json.dumps(good.to_json()).encode()))
    raw[-3] ^= 1  # one flipped bit
    storage.put("locks/" + "1" * 32, bytes(raw))
    warned: list[str] = []
    repo.on_warning = lambda name, _msg: warned.append(name)

    with repo.lock("repair", exclusive=True):  # taken: junk excludes nobody
        pass

    assert sorted(warned) == ["locks/" + "0" * 32, "locks/" + "1" * 32]
    assert lockmod.remove_locks(storage, repo.aead, all_locks=False) == 2
    assert list(storage.list("locks/")) == []


def test_unlock_remove_all_never_needs_to_read_a_lock() -> None:
    storage = MemoryStorage()
    repo = Repository.init(storage, PASSWORD, kdf=FAST_KDF)
    storage.put("locks/" + "2" * 32, b"")
    with repo.lock("backup"):
        assert lockmod.remove_locks(storage, repo.aead, all_locks=True) == 2


# --- clocks ---------------------------------------------------------------------------------


def test_prune_refuses_when_this_clock_and_the_storages_disagree() -> None:
    client = FakeClock()
    server = FakeClock(client.now() + timedelta(minutes=7))
    repo = Repository.init(MemoryStorage(clock=server), PASSWORD, kdf=FAST_KDF, clock=client)
    before = {o.name for o in repo.storage.list("")}

    with pytest.raises(ClockSkew) as err:
        prune(repo, PruneOptions(lock_skew=timedelta(minutes=5)))

    assert "420 s behind" in err.value.message and err.value.hint
    assert {o.name for o in repo.storage.list("")} == before  # nothing written or deleted
    # Within the margin it goes ahead, and says how far apart the clocks were.
    result = prune(repo, PruneOptions(lock_skew=timedelta(minutes=10)))
    assert result.clock_skew_s == -420.0


def test_a_storage_without_a_clock_is_not_measured() -> None:
    repo = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF)
    assert check_clock(repo, timedelta(0)) is None
    assert prune(repo, PruneOptions(lock_skew=timedelta(0))).clock_skew_s is None


def test_a_local_folder_agrees_with_this_machine(tmp_path: Path) -> None:
    repo = Repository.init(LocalStorage(tmp_path / "repo", create=True), PASSWORD, kdf=FAST_KDF)
    skew = check_clock(repo, timedelta(0))
    assert skew is not None and abs(skew) < timedelta(seconds=2)
