"""Restored files get the mode, user and group they were saved with, whether restore had to
set them (fchmod, fchown) or could let ``open`` create them that way."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.engine.restore.write import current_umask
from safehold.repository.repository import Repository

MODES = [0o644, 0o664, 0o600, 0o640, 0o000, 0o444, 0o755, 0o777, 0o4755, 0o2750, 0o1777]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for mode in MODES:
        p = src / f"m{mode:04o}"
        p.write_bytes(b"x" * (mode + 1))  # some with content, each different
        os.chmod(p, mode)
    (src / "empty").touch()
    os.chmod(src / "empty", 0o640)
    return src


def _modes(root: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.lstat().st_mode) for p in root.iterdir()}


def _restore(repo: Repository, src: Path, target: Path) -> Path:
    snap = run_backup(repo, BackupOptions(paths=[str(src)])).snapshot
    run_restore(repo, snap, RestoreOptions(target=str(target)))
    return target / str(src).lstrip("/")


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o000])
def test_modes_survive_any_umask(
    mem_repo: Repository, tmp_path: Path, umask: None, mask: int
) -> None:
    src = _source(tmp_path)
    os.umask(mask)
    out = _restore(mem_repo, src, tmp_path / "out")
    assert _modes(out) == _modes(src)


def test_an_existing_file_gets_the_saved_mode(
    mem_repo: Repository, tmp_path: Path, umask: None
) -> None:
    src = _source(tmp_path)
    snap = run_backup(mem_repo, BackupOptions(paths=[str(src)])).snapshot
    out = tmp_path / "out" / str(src).lstrip("/")
    out.mkdir(parents=True)
    for name in _modes(src):
        (out / name).write_bytes(b"old")
        os.chmod(out / name, 0o600)
    run_restore(mem_repo, snap, RestoreOptions(target=str(tmp_path / "out")))
    assert _modes(out) == _modes(src)
    assert (out / "m0644").read_bytes() == (src / "m0644").read_bytes()


def test_current_umask_reads_without_changing(umask: None) -> None:
    os.umask(0o027)
    assert current_umask() == 0o027
    assert os.umask(0o022) == 0o027  # still what was set


@as_root
def test_a_set_group_id_target_does_not_give_its_group(
    mem_repo: Repository, tmp_path: Path, umask: None
) -> None:
    src = _source(tmp_path)
    for p in src.iterdir():
        os.chown(p, 0, 0)
    target = tmp_path / "out"
    target.mkdir()
    os.chown(target, 0, 4242)
    os.chmod(target, 0o2775)  # new files and folders in it would get group 4242
    out = _restore(mem_repo, src, target)
    assert {p.name: (p.stat().st_uid, p.stat().st_gid) for p in out.iterdir()} == {
        p.name: (0, 0) for p in src.iterdir()
    }
    assert _modes(out) == _modes(src)


@as_root
def test_other_owners_are_set(mem_repo: Repository, tmp_path: Path, umask: None) -> None:
    src = _source(tmp_path)
    owners = {}
    for i, p in enumerate(sorted(src.iterdir())):
        owners[p.name] = (0, 0) if i % 3 == 0 else (1000 + i, 0) if i % 3 == 1 else (0, 2000 + i)
        mode = stat.S_IMODE(p.lstat().st_mode)
        os.chown(p, *owners[p.name])
        os.chmod(p, mode)  # a change of owner cleared the set-id bits
    out = _restore(mem_repo, src, tmp_path / "out")
    assert {p.name: (p.stat().st_uid, p.stat().st_gid) for p in out.iterdir()} == owners
    assert _modes(out) == _modes(src)
