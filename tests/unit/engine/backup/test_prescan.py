"""The prescan (engine/backup/prescan.py): folders listed ahead of the walk, and backups that use
it keep exactly what a walk alone keeps."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup, start_prescan
from safehold.engine.backup.prescan import FIELDS, Prescan
from safehold.engine.backup.scan import Excluder
from safehold.engine.tree_walk import find
from safehold.repository.repository import Repository
from tests.conftest import make_sample_tree


def finished(p: Prescan) -> Prescan:
    p.start()
    p._thread.join()  # let it run to the end: the tests look at what it holds
    return p


def tree(root: Path) -> Path:
    make_sample_tree(root)
    for i in range(30):
        d = root / f"d{i:02}" / "inner"
        d.mkdir(parents=True)
        (d / f"f{i}").write_bytes(os.urandom(i * 10))
    (root / "skip-me").mkdir()
    (root / "skip-me" / "x").write_bytes(b"x")
    return root


def test_listings_are_what_scandir_and_lstat_say(tmp_path: Path) -> None:
    root = tree(tmp_path / "src")
    p = finished(Prescan([str(root)], Excluder([]), False))
    below = sorted(str(d) for d in root.rglob("*") if d.is_dir() and not d.is_symlink())
    folders = [str(root), *below]
    for folder in folders:
        listed = p.take(folder)
        assert listed is not None, folder
        names = sorted(os.listdir(folder))
        assert [e.name for e in listed] == names
        for e in listed:
            assert e.path == os.path.join(folder, e.name)
            st = os.lstat(e.path)
            got = e.stat(follow_symlinks=False)
            assert [getattr(got, f) for f in FIELDS] == [getattr(st, f) for f in FIELDS]
    assert p.take(str(root)) is None  # taken once
    p.close()


def test_excluded_folders_and_other_file_systems_are_not_entered(tmp_path: Path) -> None:
    root = tree(tmp_path / "src")
    p = finished(Prescan([str(root)], Excluder(["skip-me", "*/d0*/inner"]), False))
    held = set(p._done)
    assert str(root) in held and str(root / "d10" / "inner") in held
    assert str(root / "skip-me") not in held
    assert str(root / "d01" / "inner") not in held and str(root / "d01") in held
    p.close()
    # Every folder here is on one file system: as if each were another, none is entered.
    p = Prescan([str(root)], Excluder([]), True)
    p._folder(str(root), -1)
    assert set(p._done) == {str(root)}


def test_the_limit_and_the_walk_overtaking_stop_it(tmp_path: Path) -> None:
    root = tree(tmp_path / "src")
    p = finished(Prescan([str(root)], Excluder([]), False, limit=10))
    assert 1 <= len(p._done) <= 3  # stopped after the folder that crossed the limit
    p.close()
    p = Prescan([str(root)], Excluder([]), False)
    assert p.take(str(root)) is None  # asked before it listed anything: it stops
    p.start()
    p._thread.join()
    assert not p._done


def _root_tree(repo: Repository, src: Path, prescan: Prescan | None) -> str:
    """The tree of ``src`` itself: the folders above it (/tmp) are saved too, with times
    that other processes change between two backups."""
    opts = BackupOptions(paths=[str(src)], host="h", force=True)
    found = find(repo, run_backup(repo, opts, prescan=prescan).snapshot.tree, str(src))
    assert found is not None
    return found[1].subtree


@pytest.mark.parametrize("limit", [10**6, 25, 1])
def test_a_backup_with_a_prescan_saves_the_same_trees(
    mem_repo: Repository, tmp_path: Path, limit: int
) -> None:
    src = tree(tmp_path / "src")
    alone = _root_tree(mem_repo, src, None)
    with Prescan([str(src)], Excluder([]), False, limit=limit) as p:
        p._thread.join()
        assert _root_tree(mem_repo, src, p) == alone


def test_a_folder_the_prescan_could_not_list_is_reported_by_the_walk(
    mem_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tree(tmp_path / "src")
    broken = str(src / "d05")
    real = os.scandir

    def scandir(path: str) -> os._ScandirIterator[str]:  # type: ignore[name-defined]
        if path == broken:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    p = start_prescan(BackupOptions(paths=[str(src)]))
    assert p is not None
    p._thread.join()
    assert broken not in p._done and str(src / "d06") in p._done
    result = run_backup(mem_repo, BackupOptions(paths=[str(src)], host="h"), prescan=p)
    p.close()
    assert [path for path, _ in result.errors] == [broken]


def test_no_prescan_for_streams_or_missing_paths(tmp_path: Path) -> None:
    assert start_prescan(BackupOptions(stdin_name="x")) is None
    assert start_prescan(BackupOptions(command=["true"], stdin_name="x")) is None
    assert start_prescan(BackupOptions(paths=[str(tmp_path / "missing")])) is None


def test_a_tree_deeper_than_the_recursion_limit_stops_it_quietly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "deep"
    levels = [str(root)]
    for _ in range(sys.getrecursionlimit() + 50):  # each level is at least one frame
        levels.append(levels[-1] + "/d")
    try:
        for d in levels:
            os.mkdir(d)
        p = finished(Prescan([str(root)], Excluder([]), False))
        assert p._stop and str(root) in p._done
        assert capsys.readouterr().err == ""  # no traceback from the thread
        p.close()
    finally:
        # Removed here, deepest first: pytest's own clean-up of old temporary folders
        # (a recursive rmtree) would hit the recursion limit on it in a later session.
        for d in reversed(levels):
            if os.path.isdir(d):
                os.rmdir(d)
