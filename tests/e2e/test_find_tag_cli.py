"""``find``, ``tag``, ``snapshots --latest`` and ``ls --json`` as a restic user expects them,
through the real command line; ``find`` side by side with restic 0.14 on the same tree."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safehold.engine.inspect.find import compile_patterns, find_in_snapshot
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD
from tests.integration.test_excludes_restic import cheap_restic_key
from tests.servers import need_binary

CliRunner = Callable[..., Any]
USAGE = 2


def ok(cli: CliRunner, *args: str) -> Any:
    res = cli(*args)
    assert res.code == 0, res.output
    return res


def backup(cli: CliRunner, repo: str, *args: str) -> str:
    snap: str = json.loads(ok(cli, "-r", repo, "backup", "--json", *args).stdout)["snapshot"]
    return snap


def snapshots(cli: CliRunner, repo: str, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(
        ok(cli, "-r", repo, "snapshots", "--json", *args).stdout
    )
    return found


def make_tree(root: Path) -> Path:
    """Names that tell restic's pattern rules apart: depth, '*' against '/', '**'."""
    for rel, text in {
        "a/foo/bar/f.txt": "x",
        "a/foo/g.log": "y",
        "a/foo.txt": "z",
        "b/foo.txt": "w",
        "b/deep/x/y.log": "v",
        "b/deep/a.log": "u",
        "docs/sources/p.md": "t",
        "README.md": "s",
        "c/Foo.TXT": "r",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def found(cli: CliRunner, repo: str, *args: str) -> dict[str, list[str]]:
    """``find --json``: the matching paths of each snapshot."""
    out = json.loads(ok(cli, "-r", repo, "find", "--json", *args).stdout)
    for entry in out:
        assert entry["hits"] == len(entry["matches"])
    return {entry["snapshot"]: [m["path"] for m in entry["matches"]] for entry in out}


# --- find ----------------------------------------------------------------------------------

RESTIC_CASES = [
    ["foo"],
    ["foo*"],
    ["a/foo"],
    ["*.log"],
    ["deep/*.log"],
    ["**/bar"],
    ["src/*/foo"],
    ["docs/sources"],
    ["b/**/*.log"],
    ["[ab]"],
    ["?oo.txt", "README.*"],
    ["foo/**"],
]


def test_find_selects_what_restic_find_selects(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    restic = need_binary("restic", "restic")
    src = make_tree(tmp_path / "src")
    snap = backup(cli, cli_repo, str(src))
    env = {**os.environ, "RESTIC_PASSWORD": "pw", "RESTIC_CACHE_DIR": str(tmp_path / "rc")}
    rrepo = str(tmp_path / "restic")
    subprocess.run([restic, "init", "-q", "-r", rrepo], env=env, check=True)
    cheap_restic_key(Path(rrepo), b"pw")  # each restic command derives its key once
    # restic 0.14 stores a backed-up folder at the root of its tree: /src/...
    subprocess.run([restic, "backup", "-q", "-r", rrepo, "src"], env=env, cwd=tmp_path, check=True)
    repo = Repository.open(LocalStorage(Path(cli_repo)), PASSWORD)
    repo.load_index()
    snapshot = repo.find_snapshot(snap)
    for patterns in RESTIC_CASES:
        out = subprocess.run(
            [restic, "find", "-r", rrepo, "--json", *patterns],
            env=env,
            capture_output=True,
            check=True,
        ).stdout
        theirs = sorted(m["path"] for e in json.loads(out or b"[]") for m in e["matches"])
        # The engine in this process (the command line prints what it yields): twelve
        # command lines would cost seconds of start-up for nothing more.
        matcher = compile_patterns(patterns)
        ours = sorted(
            "/src" + p.removeprefix(str(src))
            for p, _node in find_in_snapshot(repo, snapshot, matcher)
            if p == str(src) or p.startswith(f"{src}/")
        )
        assert ours == theirs, patterns


def test_find_anchors_absolute_patterns_and_prints_each_snapshot(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src")
    first = backup(cli, cli_repo, "--tag", "old", str(src))
    (src / "b" / "new.log").write_text("new")
    second = backup(cli, cli_repo, str(src))

    assert found(cli, cli_repo, f"{src}/b/*.log") == {second: [f"{src}/b/new.log"]}
    assert found(cli, cli_repo, "/b/*.log") == {}  # anchored at the root of the snapshot
    assert found(cli, cli_repo, "--tag", "old", "*.log") == {
        first: [f"{src}/a/foo/g.log", f"{src}/b/deep/a.log", f"{src}/b/deep/x/y.log"]
    }
    assert list(found(cli, cli_repo, "-s", second[:8], "-s", "latest", "g.log")) == [second]
    assert found(cli, cli_repo, "foo.txt") == {
        first: [f"{src}/a/foo.txt", f"{src}/b/foo.txt"],
        second: [f"{src}/a/foo.txt", f"{src}/b/foo.txt"],
    }
    assert found(cli, cli_repo, "-i", "FOO.txt")[first] == [
        f"{src}/a/foo.txt",
        f"{src}/b/foo.txt",
        f"{src}/c/Foo.TXT",
    ]
    assert found(cli, cli_repo, "nothing-like-this") == {}
    assert found(cli, cli_repo, "-s", second, "*.log", "!deep") == {
        second: [f"{src}/a/foo/g.log", f"{src}/b/new.log"]
    }

    text = ok(cli, "-r", cli_repo, "find", "new.log").stdout
    assert text == (
        f"Found matching entries in snapshot {second[:8]} from "
        f"{snapshots(cli, cli_repo)[1]['time'][:19].replace('T', ' ')}\n{src}/b/new.log\n\n"
    )
    long = ok(cli, "-r", cli_repo, "find", "-l", "new.log").stdout.splitlines()[1]
    assert long.startswith("-rw-r--r-- ") and long.endswith(f"{src}/b/new.log")

    bad = cli("-r", cli_repo, "find", "[z-")
    assert bad.code == USAGE and "pattern" in bad.stderr and "Traceback" not in bad.stderr
    assert cli("-r", cli_repo, "find", "-s", "ffffffff", "x").code == USAGE
    assert "'**' spans any number of folders" in ok(cli, "find", "--help").stdout


# --- tag -----------------------------------------------------------------------------------


def test_tag_add_remove_and_set_give_snapshots_new_ids_naming_the_old(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src")
    a = backup(cli, cli_repo, "--tag", "nightly", str(src))
    b = backup(cli, cli_repo, str(src))
    trees = {s["id"]: s["tree"] for s in snapshots(cli, cli_repo)}

    out = json.loads(ok(cli, "-r", cli_repo, "--json", "tag", "--add", "keep,audit", a[:8]).stdout)
    [change] = out["changed"]
    assert change["old"] == a and change["tags"] == ["audit", "keep", "nightly"]
    by_id = {s["id"]: s for s in snapshots(cli, cli_repo)}
    assert set(by_id) == {change["new"], b}
    assert by_id[change["new"]]["original"] == a
    # The same data: a's own tree (b's may differ in the folders above src, such as /tmp,
    # whose times other processes change between the two backups).
    assert by_id[change["new"]]["tree"] == trees[a]

    text = ok(cli, "-r", cli_repo, "tag", "--remove", "nightly", "--tag", "keep").stdout
    assert "1 snapshot(s) changed, 0 already tagged so" in text
    assert [s["tags"] for s in snapshots(cli, cli_repo, "--tag", "audit")] == [["audit", "keep"]]

    ok(cli, "-r", cli_repo, "tag", "--set", "", "--tag", "audit")
    ok(cli, "-r", cli_repo, "tag", "--set", "weekly", "latest")
    assert [s["tags"] for s in snapshots(cli, cli_repo)] == [[], ["weekly"]]
    assert all(s["original"] for s in snapshots(cli, cli_repo))

    for wrong in (["--set", "x", "--add", "y"], ["latest"], ["--add", "x", "ffffffff"]):
        res = cli("-r", cli_repo, "tag", *wrong)
        assert res.code == USAGE, (wrong, res.output)
    assert len(snapshots(cli, cli_repo)) == 2


def test_backup_tags_split_on_commas_as_tag_reads_them(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src")
    backup(cli, cli_repo, "--tag", "nightly,db", "--tag", "eu", str(src))
    assert [s["tags"] for s in snapshots(cli, cli_repo)] == [["db", "eu", "nightly"]]
    ok(cli, "-r", cli_repo, "tag", "--remove", "db", "latest")  # a tag of its own, removable
    assert [s["tags"] for s in snapshots(cli, cli_repo)] == [["eu", "nightly"]]


# --- snapshots --latest, ls --json ---------------------------------------------------------


def test_snapshots_latest_keeps_the_newest_of_each_host_and_paths(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    made = [
        backup(cli, cli_repo, str(tmp_path / "x")),
        backup(cli, cli_repo, str(tmp_path / "y")),
        backup(cli, cli_repo, str(tmp_path / "x")),
        backup(cli, cli_repo, "--host", "other", str(tmp_path / "x")),
        backup(cli, cli_repo, str(tmp_path / "x")),
    ]
    ids = [s["id"] for s in snapshots(cli, cli_repo, "--latest", "1")]
    assert ids == [made[1], made[3], made[4]]  # oldest first, as without it
    ids = [s["id"] for s in snapshots(cli, cli_repo, "--latest", "2")]
    assert ids == [made[1], made[2], made[3], made[4]]
    ids = [s["id"] for s in snapshots(cli, cli_repo, "--latest", "1", "--host", "other")]
    assert ids == [made[3]]
    assert "4 snapshot(s)" in ok(cli, "-r", cli_repo, "snapshots", "--latest", "2").stdout
    assert cli("-r", cli_repo, "snapshots", "--latest", "0").code == USAGE


def test_ls_json_prints_one_object_a_line_the_snapshot_first_as_restic(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src")
    snap = backup(cli, cli_repo, str(src))
    lines = ok(cli, "-r", cli_repo, "ls", "--json", "latest", str(src / "b")).stdout.splitlines()
    records = [json.loads(line) for line in lines]  # each line is a whole JSON object
    head, nodes = records[0], records[1:]
    assert head["struct_type"] == "snapshot" and head["id"] == snap
    assert head["short_id"] == snap[:8] and head["paths"] == [str(src)]
    assert [(n["struct_type"], n["path"]) for n in nodes] == [
        ("node", str(src / "b")),
        ("node", str(src / "b" / "deep")),
        ("node", str(src / "b" / "foo.txt")),
    ]
    assert nodes[2]["size"] == 1 and nodes[2]["type"] == "file"


@pytest.mark.parametrize("command", ["find", "tag", "mount"])
def test_the_new_commands_are_listed_and_explained(cli: CliRunner, command: str) -> None:
    assert command in ok(cli, "--help").stdout
    assert ok(cli, command, "--help").stdout.startswith(f"usage: safehold {command}")
