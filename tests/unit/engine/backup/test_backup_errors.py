"""What a backup says about items it could not read: each once, and a folder that vanished
during the backup once for the folder, not once (or twice) for every file it held."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup, start_prescan
from safehold.engine.backup.vanished import VANISHED
from safehold.engine.progress import Progress
from safehold.repository.repository import Repository
from tests.conftest import PASSWORD


class Warnings(Progress):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def warn(self, path: str, message: str) -> None:
        self.seen.append((path, message))


def test_a_folder_that_vanishes_during_the_backup_is_one_error(
    mem_repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "build" / "deep").mkdir(parents=True)
    (src / "keep.txt").write_text("kept")
    for i in range(200):
        (src / "build" / f"f{i}.o").write_bytes(os.urandom(64))
        (src / "build" / "deep" / f"g{i}.o").write_bytes(os.urandom(64))
    opts = BackupOptions(paths=[str(src)], threads=2)
    prescan = start_prescan(opts)
    assert prescan is not None
    prescan._thread.join(30)  # everything listed, with its stat, before the folder goes
    shutil.rmtree(src / "build")
    progress = Warnings()

    result = run_backup(mem_repo, opts, progress, prescan=prescan)
    prescan.close()

    assert result.errors == [(str(src / "build"), VANISHED)]
    assert progress.seen == [(str(src / "build"), VANISHED)]
    assert result.snapshot.errors == [{"path": str(src / "build"), "error": VANISHED}]


def test_an_item_gone_on_its_own_is_its_own_error(mem_repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    (src / "gone.txt").write_text("b")
    opts = BackupOptions(paths=[str(src)], threads=2)
    prescan = start_prescan(opts)
    assert prescan is not None
    prescan._thread.join(30)
    (src / "gone.txt").unlink()  # the folder stays: the file is the problem

    result = run_backup(mem_repo, opts, prescan=prescan)
    prescan.close()

    assert [p for p, _ in result.errors] == [str(src / "gone.txt")]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_each_unreadable_item_is_reported_once() -> None:
    # As another user, so that permissions apply (root reads everything); in a folder of
    # /tmp that user can reach (pytest's own are private to root).
    tmp_path = Path(tempfile.mkdtemp(prefix="safehold-nobody-"))
    tmp_path.chmod(0o777)
    try:
        _backup_as_nobody(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _backup_as_nobody(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "closed").mkdir(parents=True)
    (src / "closed" / "inside.txt").write_text("x")
    (src / "secret.txt").write_text("s")
    (src / "open.txt").write_text("o")
    (src / "secret.txt").chmod(0)
    (src / "closed").chmod(0)
    repo = tmp_path / "repo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env.update(SAFEHOLD_PASSWORD=PASSWORD.decode(), HOME=str(tmp_path))
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    run = [*nobody, sys.executable, "-m", "safehold", "-r", str(repo)]
    subprocess.run([*run, "init", "--kdf-log2n", "10"], env=env, check=True, capture_output=True)

    done = subprocess.run([*run, "backup", str(src)], env=env, capture_output=True, text=True)

    assert done.returncode == 3, done.stderr
    assert done.stderr.count("secret.txt") == 1, done.stderr
    assert done.stderr.count("closed") == 1, done.stderr
    assert "2 item(s) could not be read" in done.stderr
