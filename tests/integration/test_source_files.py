"""The file-like sources end to end: configured source -> engine backup -> repository ->
snapshot files -> the source's own restore (or the engine's tree restore for folders)."""

from __future__ import annotations

import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.errors import SourceError, TargetError
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.runs.snapshot_files import snapshot_files
from safehold.sources.base import RestoreRequest, Source, StreamContent
from safehold.sources.registry import kind_module
from tests.conftest import make_sample_tree
from tests.integration.helpers import tree_manifest
from tests.unit.sources.test_sqlite import ROWS, busy_writer, check_copy, make_db
from tests.unit.sources.test_volume import (
    ISLANDS,
    SIZE,
    assert_file_is_image,
    is_sparse_capable,
    make_sparse,
)


def configured(kind: str, **settings: object) -> Source:
    """A source built the way the configuration builds it: by kind, from a mapping."""
    module = kind_module(kind)
    source: Source = module.build(module.Settings.model_validate(settings))
    return source


def backup(repo: Repository, source: Source, name: str) -> Snapshot:
    content = source.content()
    if isinstance(content, StreamContent):
        opts = BackupOptions(streams=content.streams, source_kind=source.kind, source_name=name)
    else:
        opts = BackupOptions(
            paths=content.paths,
            excludes=content.excludes,
            one_file_system=content.one_file_system,
            source_kind=source.kind,
            source_name=name,
        )
    snap = run_backup(repo, opts).snapshot
    assert snap.source == source.kind and snap.source_name == name
    return snap


def restore(repo: Repository, source: Source, snap: Snapshot, **request: object) -> None:
    files = snapshot_files(repo, repo.find_snapshot(snap.id))
    source.restore(files, RestoreRequest(**request))  # type: ignore[arg-type]


def test_directory(local_repo: Repository, tmp_path: Path) -> None:
    src = make_sample_tree(tmp_path / "src")
    expected = tree_manifest(src)
    (src / "cache.tmp").write_bytes(b"skip me")
    expected["."] = tree_manifest(src)["."]  # the folder's time changed with the new file
    source = configured("directory", paths=[str(src)], excludes=["*.tmp"])
    snap = backup(local_repo, source, "data")
    run_restore(local_repo, snap, RestoreOptions(target=str(tmp_path / "out")))
    out = tmp_path / "out" / str(src).lstrip("/")
    assert tree_manifest(out) == expected  # all but the excluded file


def test_command(mem_repo: Repository, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(2_000_000))
    out = tmp_path / "restored"
    source = configured(
        "command",
        command=["cat", str(payload)],
        name="etcd.snapshot",
        restore_command="sh -c 'cat > \"$SAFEHOLD_RESTORE_TARGET\"'",
    )
    snap = backup(mem_repo, source, "etcd")
    restore(mem_repo, source, snap, target=str(out))
    assert out.read_bytes() == payload.read_bytes()


def test_a_failing_command_saves_no_snapshot(mem_repo: Repository) -> None:
    code = "import os, sys; sys.stdout.buffer.write(os.urandom(3_000_000)); sys.exit(2)"
    source = configured("command", command=[sys.executable, "-c", code], name="dump")
    with pytest.raises(SourceError, match="status 2"):
        backup(mem_repo, source, "broken")
    assert mem_repo.list_snapshots() == []


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_sqlite_under_a_busy_writer(
    local_repo: Repository, tmp_path: Path, journal_mode: str
) -> None:
    db = tmp_path / "app.db"
    make_db(db, journal_mode)
    source = configured("sqlite", path=str(db), pages_per_step=16)
    with busy_writer(db):
        snap = backup(local_repo, source, "app")
    out = tmp_path / "restored.db"
    restore(local_repo, source, snap, target=str(out))
    assert check_copy(out) >= ROWS + 20
    # Restoring over the live database needs --replace, then gives the snapshot's state.
    with pytest.raises(TargetError, match="already exists"):
        restore(local_repo, source, snap)
    restore(local_repo, source, snap, replace=True)
    with closing(sqlite3.connect(db)) as a, closing(sqlite3.connect(out)) as b:
        query = "SELECT id, hex(v) FROM orders ORDER BY id"
        assert a.execute(query).fetchall() == b.execute(query).fetchall()


def test_sparse_volume(mem_repo: Repository, tmp_path: Path) -> None:
    if not is_sparse_capable(tmp_path):
        pytest.skip("the temporary folder's file system does not keep sparse files")
    img = tmp_path / "vm.img"
    islands = make_sparse(img)
    source = configured("volume", path=str(img))
    snap = backup(mem_repo, source, "vm")
    out = tmp_path / "restored.img"
    restore(mem_repo, source, snap, target=str(out))
    assert_file_is_image(out, islands)
    assert os.stat(out).st_blocks * 512 < sum(ISLANDS.values()) + 8 * 64 * 1024
    assert os.path.getsize(out) == SIZE
