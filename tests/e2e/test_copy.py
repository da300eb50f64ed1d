"""``safehold copy`` through the real command line: restores from the copy are identical."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliResult, CliRunner

PW_B = "the destination's own password"
TO = {"SAFEHOLD_TO_PASSWORD": PW_B}


@pytest.fixture
def repo_b(cli: CliRunner, tmp_path: Path) -> str:
    path = str(tmp_path / "repo-b")
    res = cli("-r", path, "init", "--kdf-log2n", "10", env={"SAFEHOLD_PASSWORD": PW_B})
    assert res.code == 0, res.output
    return path


@pytest.fixture
def two_snapshots(cli: CliRunner, cli_repo: str, sample_tree: Path) -> list[dict[str, Any]]:
    """Repository A (``cli_repo``) with a full and an incremental backup of sample_tree."""
    assert cli("-r", cli_repo, "backup", str(sample_tree)).code == 0
    (sample_tree / "sub" / "deeper" / "notes.md").write_text("rewritten\n" * 300)
    (sample_tree / "added.bin").write_bytes(os.urandom(150_000))
    (sample_tree / "hello.txt").unlink()
    res = cli("-r", cli_repo, "backup", "--tag", "second", str(sample_tree))
    assert res.code == 0, res.output
    return snapshots(cli, cli_repo)


def snapshots(cli: CliRunner, repo: str, password: str | None = None) -> list[dict[str, Any]]:
    env = {"SAFEHOLD_PASSWORD": password} if password else None
    res = cli("-r", repo, "snapshots", "--json", env=env)
    assert res.code == 0, res.output
    found: list[dict[str, Any]] = json.loads(res.stdout)
    return found


def copy(
    cli: CliRunner, src: str, dst: str, *args: str, env: dict[str, str] | None = None
) -> CliResult:
    return cli("-r", src, "copy", "--to", dst, *args, env=env if env is not None else TO)


def tree_of(root: Path) -> dict[str, tuple[Any, ...]]:
    """What a restore must reproduce: type, permissions, mtime, and content or target."""
    out: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, path.read_bytes())
    return out


def restore(cli: CliRunner, repo: str, snap: str, target: Path, password: str | None) -> Path:
    env = {"SAFEHOLD_PASSWORD": password} if password else None
    res = cli("-r", repo, "restore", snap, "--target", str(target), env=env)
    assert res.code == 0, res.output
    return target


def test_restores_from_the_copy_are_identical(
    cli: CliRunner,
    cli_repo: str,
    repo_b: str,
    two_snapshots: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    res = copy(cli, cli_repo, repo_b)

    assert res.code == 0, res.output
    assert res.stdout.count("copied ") == 2
    copies = {s["original"]: s for s in snapshots(cli, repo_b, PW_B)}
    assert set(copies) == {s["id"] for s in two_snapshots}
    for snap in two_snapshots:
        from_a = restore(cli, cli_repo, snap["id"], tmp_path / f"a-{snap['short_id']}", None)
        copied = copies[snap["id"]]["id"]
        from_b = restore(cli, repo_b, copied, tmp_path / f"b-{snap['short_id']}", PW_B)
        expected = tree_of(from_a)
        assert any(v[0] == "file" and len(v[3]) > 1_000_000 for v in expected.values())
        assert tree_of(from_b) == expected
    # The two snapshots differ, so the comparison above compared something.
    first, second = (tree_of(tmp_path / f"a-{s['short_id']}") for s in two_snapshots)
    assert first != second


def test_a_second_copy_skips_everything(
    cli: CliRunner, cli_repo: str, repo_b: str, two_snapshots: list[dict[str, Any]]
) -> None:
    assert copy(cli, cli_repo, repo_b).code == 0
    objects = sorted(p for p in Path(repo_b).rglob("*") if "locks" not in p.parts)

    res = copy(cli, cli_repo, repo_b, "--json")

    assert res.code == 0, res.output
    assert [r["status"] for r in json.loads(res.stdout)] == ["skipped", "skipped"]
    assert sorted(p for p in Path(repo_b).rglob("*") if "locks" not in p.parts) == objects
    assert len(snapshots(cli, repo_b, PW_B)) == 2


def test_copy_of_one_snapshot_only(
    cli: CliRunner, cli_repo: str, repo_b: str, two_snapshots: list[dict[str, Any]]
) -> None:
    first = two_snapshots[0]

    res = copy(cli, cli_repo, repo_b, first["short_id"])

    assert res.code == 0, res.output
    assert [s["original"] for s in snapshots(cli, repo_b, PW_B)] == [first["id"]]


def test_filters_choose_what_is_copied(
    cli: CliRunner, cli_repo: str, repo_b: str, two_snapshots: list[dict[str, Any]]
) -> None:
    res = copy(cli, cli_repo, repo_b, "--tag", "second")

    assert res.code == 0, res.output
    assert [s["original"] for s in snapshots(cli, repo_b, PW_B)] == [two_snapshots[1]["id"]]


def test_the_copy_keeps_chain_ids_and_positions(
    cli: CliRunner, cli_repo: str, repo_b: str, two_snapshots: list[dict[str, Any]]
) -> None:
    assert copy(cli, cli_repo, repo_b).code == 0

    copies = {s["original"]: s for s in snapshots(cli, repo_b, PW_B)}

    assert two_snapshots[0]["chain"]["id"] == two_snapshots[1]["chain"]["id"]
    assert [s["chain"]["seq"] for s in two_snapshots] == [0, 1]
    for snap in two_snapshots:
        assert copies[snap["id"]]["chain"] == snap["chain"]  # id, seq and isolated
        assert copies[snap["id"]]["id"] != snap["id"]


def test_the_copy_is_not_readable_with_the_source_password(
    cli: CliRunner, cli_repo: str, repo_b: str, two_snapshots: list[dict[str, Any]]
) -> None:
    assert copy(cli, cli_repo, repo_b).code == 0

    res = cli("-r", repo_b, "snapshots")  # with A's password

    assert res.code == 12, res.output
    packs_a = {p.name for p in (Path(cli_repo) / "data").rglob("*") if p.is_file()}
    packs_b = {p.name for p in (Path(repo_b) / "data").rglob("*") if p.is_file()}
    assert packs_b
    assert not packs_a & packs_b


def test_copy_to_a_location_without_a_repository(
    cli: CliRunner, cli_repo: str, two_snapshots: list[dict[str, Any]], tmp_path: Path
) -> None:
    nowhere = tmp_path / "nowhere"

    res = copy(cli, cli_repo, str(nowhere))

    assert res.code == 10, res.output
    assert "destination" in res.stderr
    assert not nowhere.exists()


def test_wrong_destination_password(
    cli: CliRunner, cli_repo: str, repo_b: str, two_snapshots: list[dict[str, Any]]
) -> None:
    res = copy(cli, cli_repo, repo_b, env={"SAFEHOLD_TO_PASSWORD": "wrong"})

    assert res.code == 12, res.output
    assert "destination" in res.stderr
    assert snapshots(cli, repo_b, PW_B) == []


def test_destination_from_the_environment_and_password_from_a_file(
    cli: CliRunner,
    cli_repo: str,
    repo_b: str,
    two_snapshots: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    pw_file = tmp_path / "pw-b"
    pw_file.write_text(PW_B + "\n")

    res = cli(
        "-r",
        cli_repo,
        "copy",
        "--to-password-file",
        str(pw_file),
        env={"SAFEHOLD_TO_REPOSITORY": repo_b},
    )

    assert res.code == 0, res.output
    assert len(snapshots(cli, repo_b, PW_B)) == 2


def test_password_command(
    cli: CliRunner,
    cli_repo: str,
    repo_b: str,
    two_snapshots: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    pw_file = tmp_path / "pw-b"
    pw_file.write_text(PW_B)

    res = copy(cli, cli_repo, repo_b, "--to-password-command", f"cat {pw_file}", env={})

    assert res.code == 0, res.output
    assert len(snapshots(cli, repo_b, PW_B)) == 2


def test_no_destination_or_no_destination_password(
    cli: CliRunner, cli_repo: str, repo_b: str, two_snapshots: list[dict[str, Any]]
) -> None:
    res = cli("-r", cli_repo, "copy", env=TO)
    assert res.code == 2
    assert "no destination" in res.stderr

    res = copy(cli, cli_repo, repo_b, env={})
    assert res.code == 2
    assert "no destination repository password given" in res.stderr
    assert snapshots(cli, repo_b, PW_B) == []
