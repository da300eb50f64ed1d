"""A hostile or damaged parent snapshot (written with the repository key, issue 14 defect 2)
costs neither the next backup nor prune: the backup goes on as if there were no parent,
prune keeps the hostile tree's blobs."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.errors import UsageError
from safehold.repository.check import check_repository
from safehold.repository.prune import PruneOptions, prune
from safehold.repository.repository import Repository
from tests.conftest import PASSWORD
from tests.hostile import file, folder, write_snapshot


def _hostile_parent(repo: Repository, src: Path) -> None:
    """A snapshot of ``src`` (same host and path as the backups below) whose folder for
    ``src`` holds a name that climbs out."""
    parts = [p for p in str(src).split("/") if p]
    node = folder(parts[-1], file("../escape", b"evil"), file("keep.txt", b"old"))
    for part in reversed(parts[:-1]):
        node = folder(part, node)
    write_snapshot(repo, [node], paths=[str(src)])


def test_a_backup_after_a_hostile_parent_succeeds(mem_repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_text("new")
    _hostile_parent(mem_repo, src)

    result = run_backup(mem_repo, BackupOptions(paths=[str(src)], host="hostile", threads=2))

    assert result.snapshot.parent  # the hostile snapshot was its parent ...
    out = tmp_path / "out"
    restored = run_restore(mem_repo, result.snapshot, RestoreOptions(target=str(out)))
    assert not restored.errors  # ... but nothing of it was taken over
    assert (out / str(src).lstrip("/") / "keep.txt").read_text() == "new"
    assert sorted(p.name for p in (out / str(src).lstrip("/")).iterdir()) == ["keep.txt"]


def test_prune_keeps_a_hostile_trees_blobs(mem_repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _hostile_parent(mem_repo, src)
    before = set(mem_repo.list_packs())

    result = prune(mem_repo, PruneOptions(lock_skew=timedelta(0)))

    assert result.packs_deleted == 0 and set(mem_repo.list_packs()) == before
    report = check_repository(Repository.open(mem_repo.storage, PASSWORD))
    assert {p.code for p in report.errors} == {"tree-damaged"}  # check still names it


@pytest.mark.parametrize("name", [".", "..", "/../"])
def test_a_stream_name_that_is_no_file_name_is_refused_first(
    mem_repo: Repository, name: str
) -> None:
    opts = BackupOptions(stdin_name=name, stdin=io.BytesIO(b"data"))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="cannot be a file name"):
        run_backup(mem_repo, opts)
    assert list(mem_repo.storage.list("data/")) == []  # refused before any upload
