"""The backup/restore commands as users run them: options, output modes, passwords."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, CliRunner


def snapshots(cli: CliRunner, repo: str) -> list[dict[str, object]]:
    res = cli("-r", repo, "snapshots", "--json")
    assert res.code == 0, res.output
    data: list[dict[str, object]] = json.loads(res.stdout)
    return data


def test_backup_json_tags_host_and_roundtrip(
    cli: CliRunner, cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    res = cli(
        "-r", cli_repo, "backup", str(sample_tree), "--tag", "nightly", "--host", "db1", "--json"
    )
    assert res.code == 0, res.output
    out = json.loads(res.stdout)
    assert out["summary"]["files_new"] == 5 and out["chain_seq"] == 0
    snaps = snapshots(cli, cli_repo)
    assert len(snaps) == 1
    assert snaps[0]["hostname"] == "db1" and snaps[0]["tags"] == ["nightly"]
    assert snaps[0]["paths"] == [str(sample_tree)]
    # Global options work after the command too, and human output lists the snapshot.
    listing = cli("snapshots", "-r", cli_repo)
    assert str(snaps[0]["short_id"]) in listing.stdout
    target = tmp_path / "restore"
    res = cli("-r", cli_repo, "restore", "latest", "--host", "db1", "--target", str(target))
    assert res.code == 0, res.output
    restored = target / str(sample_tree).lstrip("/")
    assert (restored / "sub" / "data.bin").read_bytes() == (
        sample_tree / "sub" / "data.bin"
    ).read_bytes()
    # In a pipe there is no progress bar: nothing but the summary on stderr.
    assert "\x1b[" not in res.stderr


def test_stdin_and_command_sources(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    payload = os.urandom(2_000_000)
    res = cli("-r", cli_repo, "backup", "--stdin-name", "db.dump", input=payload)
    assert res.code == 0, res.output
    res = cli(
        "-r",
        cli_repo,
        "backup",
        "--stdin-name",
        "gen.txt",
        "--command",
        f"{sys.executable} -c \"print('x' * 100000)\"",
    )
    assert res.code == 0, res.output
    snaps = snapshots(cli, cli_repo)
    assert [s["source"] for s in snaps] == ["stdin", "command"]
    target = tmp_path / "r"
    res = cli("-r", cli_repo, "restore", str(snaps[0]["id"])[:10], "--target", str(target))
    assert res.code == 0, res.output
    assert (target / "db.dump").read_bytes() == payload


def test_command_failure_saves_nothing(cli: CliRunner, cli_repo: str) -> None:
    res = cli(
        "-r", cli_repo, "backup", "--stdin-name", "x", "--command", "sh -c 'echo partial; exit 3'"
    )
    assert res.code == 6
    assert "exited with status 3" in res.stderr and "no snapshot" in res.stderr
    assert snapshots(cli, cli_repo) == []


def test_password_file_and_command(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(PASSWORD + b"\n")
    env = {"SAFEHOLD_PASSWORD": ""}
    res = cli("-r", cli_repo, "--password-file", str(pw), "snapshots", env=env)
    assert res.code == 0, res.output
    res = cli("-r", cli_repo, "--password-command", f"cat {pw}", "snapshots", env=env)
    assert res.code == 0, res.output
    res = cli("-r", cli_repo, "--password-command", "false", "snapshots", env=env)
    assert res.code == 2 and "password command" in res.stderr
    bad = tmp_path / "bad"
    bad.write_text("nope")
    res = cli("-r", cli_repo, "--password-file", str(bad), "snapshots")
    assert res.code == 12 and "wrong password" in res.stderr
    # The password never appears in any output.
    assert PASSWORD.decode() not in res.output


def test_no_password_and_no_repo_given(
    cli: CliRunner, cli_env: dict[str, str], cli_repo: str
) -> None:
    env = dict(cli_env)
    del env["SAFEHOLD_PASSWORD"]
    proc = subprocess.run(
        [sys.executable, "-m", "safehold", "-r", cli_repo, "snapshots"],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 2 and b"SAFEHOLD_PASSWORD" in proc.stderr
    res = subprocess.run(
        [sys.executable, "-m", "safehold", "snapshots"],
        env=cli_env,
        capture_output=True,
        check=False,
    )
    assert res.returncode == 2 and b"SAFEHOLD_REPOSITORY" in res.stderr


def test_help_and_version(cli: CliRunner) -> None:
    res = cli("--help")
    assert res.code == 0 and "exit codes" in res.stdout and "backup" in res.stdout
    res = cli("backup", "--help")
    assert res.code == 0 and "--chain-length" in res.stdout and "--one-file-system" in res.stdout
    assert cli("--version").stdout.startswith("safehold ")


def test_one_file_system(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    mnt = src / "mnt"
    mnt.mkdir(parents=True)
    (src / "kept.txt").write_text("kept")
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (mnt / "other-fs.txt").write_text("on another file system")
        res = cli("-r", cli_repo, "backup", "-x", str(src))
        assert res.code == 0, res.output
        res = cli("-r", cli_repo, "ls", "latest", "--json")
        paths = (
            [
                json.loads(line).get("path") if line.startswith("{") else None
                for line in res.stdout.splitlines()
            ]
            if not res.stdout.lstrip().startswith("[")
            else [n["path"] for n in json.loads(res.stdout)]
        )
        assert str(src / "kept.txt") in paths
        assert str(mnt) in paths  # the mount point itself is kept
        assert str(mnt / "other-fs.txt") not in paths
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _pack_files_bytes(repo: str) -> int:
    """What the repository's packs take on disk: the sizes of the files under data/."""
    return sum(f.stat().st_size for f in (Path(repo) / "data").rglob("*") if f.is_file())


def test_backup_json_reports_the_repositorys_packs_bytes(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    """``summary.repository_packs_bytes`` is the repository's packs after the backup, the
    other backups' and this one's: the data/ files on disk. A prune since is reflected at
    the next backup."""
    src = tmp_path / "src"
    src.mkdir()

    def backup() -> tuple[str, int]:
        res = cli("-r", cli_repo, "backup", str(src), "--json")
        assert res.code == 0, res.output
        out = json.loads(res.stdout)
        return str(out["snapshot"]), int(out["summary"]["repository_packs_bytes"])

    (src / "a").write_bytes(os.urandom(700_000))
    first, size = backup()
    assert size == _pack_files_bytes(cli_repo)
    (src / "a").write_bytes(os.urandom(600_000))
    _, grown = backup()
    assert grown == _pack_files_bytes(cli_repo) and grown > size + 600_000
    # The snapshot keeps what the backup did, not the repository's size.
    assert not any("repository_packs_bytes" in str(s["summary"]) for s in snapshots(cli, cli_repo))
    assert cli("-r", cli_repo, "forget", first).code == 0
    pruned = cli("-r", cli_repo, "prune", "--lock-skew", "0", "--max-unused", "0%")
    assert pruned.code == 0, pruned.output
    _, shrunk = backup()  # nothing new: only the prune changed the packs
    assert shrunk == _pack_files_bytes(cli_repo) and shrunk < grown - 600_000
