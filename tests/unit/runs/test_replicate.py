"""Several destinations: each gets its copy; one that fails does not stop the others."""

from __future__ import annotations

from pathlib import Path

from safehold.archive import ArchiveOptions, list_archives
from safehold.engine.backup import BackupOptions, run_backup
from safehold.errors import StorageError
from safehold.repository.repository import Repository
from safehold.runs.replicate import ArchiveDestination, RepositoryDestination, replicate
from safehold.storage.memory import MemoryStorage
from tests.conftest import FAST_KDF, PASSWORD


def _unreachable() -> Repository:
    raise StorageError("cannot reach s3:https://198.51.100.1/b", hint="check the network")


def test_one_unreachable_destination_fails_only_its_copy(
    mem_repo: Repository, sample_tree: Path
) -> None:
    snap = run_backup(mem_repo, BackupOptions(paths=[str(sample_tree)])).snapshot
    second = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF)
    archive_store = MemoryStorage()
    outcomes = replicate(
        mem_repo,
        snap,
        [
            RepositoryDestination("down", _unreachable),
            RepositoryDestination("second", lambda: second),
            ArchiveDestination("plain", lambda: archive_store, ArchiveOptions(prefix="a")),
        ],
    )
    by_name = {o.destination: o for o in outcomes}
    assert by_name["down"].status == "failed" and "cannot reach" in by_name["down"].error
    assert by_name["second"].status == "copied"
    copies = second.list_snapshots()
    assert [s.id for s in copies] == [by_name["second"].target]
    assert copies[0].original == snap.id
    assert by_name["plain"].status == "archived"
    assert [e.name for e in list_archives(archive_store, "a")] == [by_name["plain"].target]
    # Running again skips the repository copy (already there) and stays correct.
    again = replicate(mem_repo, snap, [RepositoryDestination("second", lambda: second)])
    assert again[0].status == "skipped" and len(second.list_snapshots()) == 1
