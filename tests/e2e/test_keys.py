"""``safehold key``: list, add, remove and passwd, through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from safehold.repository.format import storage_id
from tests.conftest import CliRunner

NEW = "a new password"
WRONG_PASSWORD = 12


def keys(cli: CliRunner, repo: str, password: str | None = None) -> list[dict[str, Any]]:
    """The keys as listed with ``password`` (default: the one the repository was made with)."""
    env = {"SAFEHOLD_PASSWORD": password} if password else None
    res = cli("-r", repo, "key", "list", "--json", env=env)
    assert res.code == 0, res.output
    found: list[dict[str, Any]] = json.loads(res.stdout)
    return found


def add_key(cli: CliRunner, repo: str, new: str = NEW) -> None:
    res = cli("-r", repo, "key", "add", "--kdf-log2n", "10", env={"SAFEHOLD_NEW_PASSWORD": new})
    assert res.code == 0, res.output


def test_after_add_both_passwords_open(cli: CliRunner, cli_repo: str) -> None:
    add_key(cli, cli_repo)

    with_old = keys(cli, cli_repo)
    with_new = keys(cli, cli_repo, NEW)

    assert len(with_old) == len(with_new) == 2
    # Each password opens through its own key file.
    assert {k["id"] for k in with_old if k["current"]} != {
        k["id"] for k in with_new if k["current"]
    }
    assert all(k["n"] == 1024 for k in with_new)  # --kdf-log2n was honoured
    res = cli("-r", cli_repo, "snapshots", env={"SAFEHOLD_PASSWORD": "not it"})
    assert res.code == WRONG_PASSWORD


def test_add_reads_the_new_password_from_a_file(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    pw_file = tmp_path / "new-pw"
    pw_file.write_text("from a file\n")

    res = cli(
        "-r", cli_repo, "key", "add", "--kdf-log2n", "10", "--new-password-file", str(pw_file)
    )

    assert res.code == 0, res.output
    assert len(keys(cli, cli_repo, "from a file")) == 2


def test_add_without_a_new_password_is_refused(cli: CliRunner, cli_repo: str) -> None:
    res = cli("-r", cli_repo, "key", "add", "--kdf-log2n", "10")

    assert res.code == 2
    assert "no new password" in res.stderr
    assert len(keys(cli, cli_repo)) == 1


def test_list_marks_the_key_in_use(cli: CliRunner, cli_repo: str) -> None:
    add_key(cli, cli_repo)
    current = next(k for k in keys(cli, cli_repo, NEW) if k["current"])

    res = cli("-r", cli_repo, "key", "list", env={"SAFEHOLD_PASSWORD": NEW})

    assert res.code == 0, res.output
    marked = [line for line in res.stdout.splitlines() if line.startswith("* ")]
    assert len(marked) == 1
    assert marked[0].split()[1] == current["id"][:8]
    assert current["hostname"] in marked[0]


def test_removed_password_no_longer_opens(cli: CliRunner, cli_repo: str) -> None:
    add_key(cli, cli_repo)
    other = next(k for k in keys(cli, cli_repo) if not k["current"])

    res = cli("-r", cli_repo, "key", "remove", other["id"][:8])

    assert res.code == 0, res.output
    res = cli("-r", cli_repo, "snapshots", env={"SAFEHOLD_PASSWORD": NEW})
    assert res.code == WRONG_PASSWORD, res.output
    [left] = keys(cli, cli_repo)
    assert left["current"]
    assert left["id"] != other["id"]


def test_the_key_in_use_cannot_be_removed(cli: CliRunner, cli_repo: str) -> None:
    add_key(cli, cli_repo)
    current = next(k for k in keys(cli, cli_repo) if k["current"])

    res = cli("-r", cli_repo, "key", "remove", current["id"])

    assert res.code == 2
    assert "opened with" in res.stderr
    assert len(keys(cli, cli_repo)) == 2


def test_the_last_key_cannot_be_removed(cli: CliRunner, cli_repo: str) -> None:
    [only] = keys(cli, cli_repo)

    res = cli("-r", cli_repo, "key", "remove", only["id"][:6])

    assert res.code == 2
    assert "last key" in res.stderr
    assert keys(cli, cli_repo) == [only]


def test_remove_with_an_unknown_id_is_refused(cli: CliRunner, cli_repo: str) -> None:
    add_key(cli, cli_repo)

    res = cli("-r", cli_repo, "key", "remove", "zz")

    assert res.code == 2
    assert "no key" in res.stderr
    assert len(keys(cli, cli_repo)) == 2


def test_remove_is_refused_while_another_process_uses_the_repository(
    cli: CliRunner, cli_repo: str, cli_env: dict[str, str]
) -> None:
    add_key(cli, cli_repo)
    other = next(k for k in keys(cli, cli_repo) if not k["current"])
    # A backup of a stream that has not ended yet holds a shared lock.
    holder = subprocess.Popen(
        [sys.executable, "-m", "safehold", "-r", cli_repo, "backup", "--stdin-name", "s"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env,
    )
    try:
        locks = Path(cli_repo) / "locks"
        deadline = time.monotonic() + 30
        while not (locks.is_dir() and any(locks.iterdir())):
            assert time.monotonic() < deadline, "the backup never took its lock"
            time.sleep(0.05)

        res = cli("-r", cli_repo, "key", "remove", other["id"][:8])

        assert res.code == 11, res.output
        assert len(keys(cli, cli_repo)) == 2
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    res = cli("-r", cli_repo, "key", "remove", other["id"][:8])
    assert res.code == 0, res.output


def test_passwd_leaves_one_key_that_opens_with_the_new_password(
    cli: CliRunner, cli_repo: str, sample_tree: Path
) -> None:
    assert cli("-r", cli_repo, "backup", str(sample_tree)).code == 0
    [old] = keys(cli, cli_repo)

    res = cli(
        "-r",
        cli_repo,
        "key",
        "passwd",
        "--kdf-log2n",
        "10",
        env={"SAFEHOLD_NEW_PASSWORD": NEW},
    )

    assert res.code == 0, res.output
    [new] = keys(cli, cli_repo, NEW)
    assert new["current"]
    assert new["id"] != old["id"]
    assert cli("-r", cli_repo, "snapshots").code == WRONG_PASSWORD
    res = cli("-r", cli_repo, "snapshots", "--json", env={"SAFEHOLD_PASSWORD": NEW})
    assert res.code == 0, res.output
    assert len(json.loads(res.stdout)) == 1


def _add_key_file(repo: str, raw: bytes) -> str:
    """Store ``raw`` (with spaces added at its end) in the repository's keys/ under its
    content's name, one that sorts before every other key file's: opening in name order
    would meet it first. Returns the id."""
    keys = Path(repo) / "keys"
    others = [p.name for p in keys.iterdir()]
    for i in range(10_000):
        name = storage_id(raw + b" " * i)
        if all(name < other for other in others):
            (keys / name).write_bytes(raw + b" " * i)
            return name
    raise AssertionError("no name sorted first")


def test_a_junk_key_file_is_skipped_with_a_warning(
    cli: CliRunner, cli_repo: str, sample_tree: Path
) -> None:
    junk = _add_key_file(cli_repo, b"{ this is not a key file")

    backup = cli("-r", cli_repo, "backup", str(sample_tree))
    snapshots = cli("-r", cli_repo, "snapshots", "--json")

    for res in (backup, snapshots):
        assert res.code == 0, res.output
        assert f"warning: keys/{junk}" in res.stderr
        assert "not valid JSON" in res.stderr
    assert len(json.loads(snapshots.stdout)) == 1
    listed = cli("-r", cli_repo, "key", "list")
    assert listed.code == 0, listed.output
    [line] = [x for x in listed.stdout.splitlines() if x.startswith("! ")]
    assert line.split()[1] == junk[:8] and "damaged" in line
    [entry] = [k for k in keys(cli, cli_repo) if "damaged" in k]
    assert entry["id"] == junk
    removed = cli("-r", cli_repo, "key", "remove", junk[:10])
    assert removed.code == 0, removed.output
    assert cli("-r", cli_repo, "snapshots").stderr == ""


def test_a_hostile_key_file_costs_no_time(cli: CliRunner, cli_repo: str) -> None:
    # p=300 at the default n made every command take 21-37 s on the reference machine.
    [key] = (Path(cli_repo) / "keys").iterdir()
    doc = json.loads(key.read_bytes())
    hostile = _add_key_file(cli_repo, json.dumps({**doc, "n": 1 << 15, "p": 300}).encode())

    started = time.monotonic()
    res = cli("-r", cli_repo, "snapshots", timeout=30)

    assert res.code == 0, res.output
    assert time.monotonic() - started < 15
    assert f"keys/{hostile}" in res.stderr and "p=300" in res.stderr


def test_a_foreign_key_file_is_not_a_damaged_config(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    other = str(tmp_path / "other")
    assert cli("-r", other, "init", "--kdf-log2n", "10").code == 0
    [key] = (Path(other) / "keys").iterdir()
    foreign = _add_key_file(cli_repo, key.read_bytes())

    res = cli("-r", cli_repo, "snapshots")

    assert res.code == 0, res.output
    assert f"keys/{foreign}" in res.stderr and "another repository" in res.stderr


def test_only_damaged_key_files_exit_4_naming_them(cli: CliRunner, cli_repo: str) -> None:
    [key] = (Path(cli_repo) / "keys").iterdir()
    junk = _add_key_file(cli_repo, b"junk")
    key.unlink()

    res = cli("-r", cli_repo, "snapshots")
    wrong = cli("-r", cli_repo, "snapshots", env={"SAFEHOLD_PASSWORD": "not it"})

    assert res.code == 4, res.output
    assert f"keys/{junk}" in res.stderr and "Traceback" not in res.stderr
    assert wrong.code == 4, wrong.output  # no key file could have opened with any password


def test_a_wrong_password_beside_a_junk_key_file_exits_12(cli: CliRunner, cli_repo: str) -> None:
    junk = _add_key_file(cli_repo, b"junk")

    res = cli("-r", cli_repo, "snapshots", env={"SAFEHOLD_PASSWORD": "not it"})

    assert res.code == WRONG_PASSWORD, res.output
    assert "wrong password" in res.stderr and f"keys/{junk}" in res.stderr


def test_key_help_says_what_removing_a_key_does_not_do(cli: CliRunner) -> None:
    res = cli("key", "--help")

    assert res.code == 0
    assert "master key" in res.stdout and "copy of an old" in res.stdout
    assert "copy --to NEW" in res.stdout


def test_init_with_restics_lanes_writes_them_and_refuses_too_many(
    cli: CliRunner, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    res = cli("-r", str(repo), "init", "--kdf-log2n", "10", "--kdf-p", "8")
    assert res.code == 0, res.output
    [key] = list((repo / "keys").iterdir())
    assert json.loads(key.read_text())["p"] == 8
    assert cli("-r", str(repo), "snapshots").code == 0  # opens with it
    bad = cli("-r", str(tmp_path / "other"), "init", "--kdf-p", "17")
    assert bad.code == 2 and "p=17" in bad.stderr
    assert not (tmp_path / "other").exists()


def test_init_calibrates_its_lanes_as_restic_does(cli: CliRunner, tmp_path: Path) -> None:
    # restic fills 0.5 s of one core with its scrypt lanes; so does init, with at least 4
    # (docs/format.md, "Cost of a guess"). The full cost: this test derives it twice.
    repo = tmp_path / "repo"
    res = cli("-r", str(repo), "init")
    assert res.code == 0, res.output
    [key] = list((repo / "keys").iterdir())
    doc = json.loads(key.read_text())
    assert (doc["kdf"], doc["n"], doc["r"]) == ("scrypt-lanes", 1 << 15, 8)
    assert 4 <= doc["p"] <= 16
    assert cli("-r", str(repo), "snapshots").code == 0
    # The tests' cheap keys are not calibrated: 4 lanes.
    cheap = tmp_path / "cheap"
    assert cli("-r", str(cheap), "init", "--kdf-log2n", "10").code == 0
    [key] = list((cheap / "keys").iterdir())
    assert json.loads(key.read_text())["p"] == 4
