"""The plain-archive layout: written, listed, restored with safehold and with stock tools."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from safehold.archive import (
    ArchiveOptions,
    find_archive,
    forget_archives,
    list_archives,
    restore_archive,
    write_archive,
)
from safehold.crypto.openssl_enc import PBKDF2_ITERATIONS
from safehold.engine.backup import BackupOptions, run_backup
from safehold.errors import IntegrityError, UsageError, WrongPassword
from safehold.policy.retention import RetentionPolicy
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.memory import MemoryStorage
from tests.integration.helpers import assert_same_tree, restored_root, tree_manifest

# Tar extractors set times through floats, so restored times match to the microsecond,
# not the nanosecond: these tests compare content, modes, links and structure.


def _backup(repo: Repository, src: Path) -> Snapshot:
    return run_backup(repo, BackupOptions(paths=[str(src)])).snapshot


def test_archive_round_trip_under_dated_prefix(
    mem_repo: Repository, sample_tree: Path, tmp_path: Path
) -> None:
    snap = _backup(mem_repo, sample_tree)
    store = MemoryStorage()
    entry = write_archive(mem_repo, snap, store, ArchiveOptions(prefix="backups/pg"))
    day = snap.time.astimezone(UTC)
    assert entry.name.startswith(f"backups/pg/{day:%Y/%m/%d}/")
    assert entry.name.endswith(f"_{snap.short_id}.tar.zst")
    checksum = store.get(entry.name + ".sha256").decode()
    assert checksum == f"{hashlib.sha256(store.get(entry.name)).hexdigest()}  " + (
        entry.name.rsplit("/", 1)[-1] + "\n"
    )
    assert [e.name for e in list_archives(store, "backups/pg")] == [entry.name]
    target = tmp_path / "out"
    restore_archive(store, find_archive(store, "backups/pg", "latest"), str(target))
    assert_same_tree(tree_manifest(sample_tree), restored_root(target, sample_tree), mtimes=False)


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("openssl", "zstd", "tar")), reason="needs openssl/zstd/tar"
)
def test_encrypted_archive_opens_with_openssl_zstd_and_tar(
    mem_repo: Repository, sample_tree: Path, tmp_path: Path
) -> None:
    snap = _backup(mem_repo, sample_tree)
    store = MemoryStorage()
    secret = b"archive pass phrase"
    entry = write_archive(mem_repo, snap, store, ArchiveOptions(passphrase=secret))
    assert entry.encrypted and entry.name.endswith(".tar.zst.enc")
    blob = tmp_path / "a.enc"
    blob.write_bytes(store.get(entry.name))
    (tmp_path / "pass").write_bytes(secret)
    out = tmp_path / "stock"
    out.mkdir()
    # The documented command, nothing of safehold's.
    pipeline = (
        f"openssl enc -d -aes-256-cbc -pbkdf2 -iter {PBKDF2_ITERATIONS} -md sha256 "
        f"-pass file:{tmp_path / 'pass'} -in {blob} | zstd -d | tar -x -C {out}"
    )
    subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True)
    assert_same_tree(tree_manifest(sample_tree), restored_root(out, sample_tree), mtimes=False)
    # And safehold restores it too; a wrong passphrase is named as such.
    restore_archive(store, entry, str(tmp_path / "mine"), passphrase=secret)
    assert_same_tree(
        tree_manifest(sample_tree), restored_root(tmp_path / "mine", sample_tree), mtimes=False
    )
    with pytest.raises(WrongPassword):
        restore_archive(store, entry, str(tmp_path / "bad"), passphrase=b"nope")
    with pytest.raises(UsageError, match="encrypted"):
        restore_archive(store, entry, str(tmp_path / "none"))


def test_damaged_archive_is_refused_before_extracting(
    mem_repo: Repository, sample_tree: Path, tmp_path: Path
) -> None:
    snap = _backup(mem_repo, sample_tree)
    store = MemoryStorage()
    entry = write_archive(mem_repo, snap, store, ArchiveOptions())
    data = bytearray(store.get(entry.name))
    data[len(data) // 2] ^= 0x01
    store.delete(entry.name)
    store.put(entry.name, bytes(data))
    target = tmp_path / "out"
    with pytest.raises(IntegrityError, match="checksum"):
        restore_archive(store, entry, str(target))
    assert not any(target.rglob("*.txt"))


def test_archive_without_checksum_is_not_listed(mem_repo: Repository, sample_tree: Path) -> None:
    store = MemoryStorage()
    entry = write_archive(mem_repo, _backup(mem_repo, sample_tree), store, ArchiveOptions())
    store.delete(entry.name + ".sha256")  # an upload cut off before its checksum
    assert list_archives(store) == []


def test_retention_applies_to_archives(mem_repo: Repository, sample_tree: Path) -> None:
    snap = _backup(mem_repo, sample_tree)
    store = MemoryStorage()
    base = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    for day in range(5):
        dated = Snapshot(**{**snap.__dict__, "time": base + timedelta(days=day)})
        write_archive(mem_repo, dated, store, ArchiveOptions(prefix="p"))
    result = forget_archives(store, "p", RetentionPolicy(keep_last=2), base + timedelta(days=6))
    assert len(result.keep) == 2 and len(result.remove) == 3
    left = list_archives(store, "p")
    assert [e.time.day for e in left] == [4, 5]
    assert not [o.name for o in store.list("p/") if o.name.endswith(".sha256")][2:]
