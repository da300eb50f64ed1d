"""Configured SQLite and volume sources through the command line: a refused restore target
exits 7 (README's table: the restore target could not be written), as postgres, mysql and
redis do; a ``freeze`` path that is not a mount point exits 2, before anything is frozen."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from safehold.errors import ExitCode
from tests.conftest import PASSWORD, CliRunner


def configure(cli_repo: str, tmp_path: Path, source: str) -> tuple[list[str], dict[str, str]]:
    """Writes a configuration with one source ``s`` (YAML lines, indented under it)."""
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository:\n  location: {cli_repo}\n  password_env: REPO_PW\nsources:\n  s:\n{source}"
    )
    env = {"REPO_PW": PASSWORD.decode(), "SAFEHOLD_STATE_DIR": str(tmp_path / "state")}
    return ["--config", str(config), "--source", "s"], env


def test_sqlite_refused_targets_exit_7(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE t (v)")
        conn.execute("INSERT INTO t VALUES (1)")
    args, env = configure(cli_repo, tmp_path, f"    type: sqlite\n    path: {db}\n")
    res = cli("backup", *args, env=env)
    assert res.code == 0, res.output
    res = cli("restore", *args, "latest", env=env)  # over the live database, no --replace
    assert res.code == ExitCode.TARGET and "already exists" in res.stderr, res.output
    res = cli("restore", *args, "latest", "--target", str(tmp_path), env=env)
    assert res.code == ExitCode.TARGET and "not a regular file" in res.stderr, res.output


def test_volume_refused_targets_exit_7(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(100_000))
    args, env = configure(cli_repo, tmp_path, f"    type: volume\n    path: {image}\n")
    res = cli("backup", *args, env=env)
    assert res.code == 0, res.output
    res = cli("restore", *args, "latest", env=env)  # over the image, no --replace
    assert res.code == ExitCode.TARGET and "already holds data" in res.stderr, res.output
    res = cli("restore", *args, "latest", "--target", str(tmp_path), env=env)
    assert res.code == ExitCode.TARGET and "neither a file nor a device" in res.stderr, res.output


def test_freeze_of_a_plain_folder_exits_2_and_freezes_nothing(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(100_000))
    folder = tmp_path / "images"
    folder.mkdir()
    # A stand-in named fsfreeze that only logs: the real one would freeze the file system
    # holding the folder (the root file system, on most machines) if the check let it by.
    fake = tmp_path / "fsfreeze"
    log = tmp_path / "froze"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    args, env = configure(
        cli_repo,
        tmp_path,
        f"    type: volume\n    path: {image}\n    freeze: {folder}\n"
        f'    freeze_command: [{fake}, -f, "{{mountpoint}}"]\n'
        f'    thaw_command: [{fake}, -u, "{{mountpoint}}"]\n',
    )
    res = cli("backup", *args, env=env)
    owner = subprocess.run(
        ["findmnt", "--noheadings", "--output", "TARGET", "--target", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert res.code == ExitCode.USAGE, res.output
    assert f"{str(folder)!r} is not a mount point" in res.stderr, res.output
    assert f"mounted at {owner!r}" in res.stderr, res.output
    assert not log.exists()
    assert "saved" not in res.stdout
