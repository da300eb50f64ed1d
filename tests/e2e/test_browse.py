"""``ls``, ``diff``, ``dump``, ``stats`` and ``chain`` through the real command line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CliRunner = Callable[..., Any]  # the ``cli`` fixture of tests/conftest.py

USAGE = 2


def ok(cli: CliRunner, *args: str) -> Any:
    res = cli(*args)
    assert res.code == 0, res.output
    return res


def backup(cli: CliRunner, repo: str, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(ok(cli, "-r", repo, "backup", "--json", *args).stdout)
    return found


def snapshots(cli: CliRunner, repo: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(ok(cli, "-r", repo, "snapshots", "--json").stdout)
    return found


def raw_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    """The command line with its standard output as bytes (``cli`` decodes it as text)."""
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


def below(root: Path) -> set[str]:
    """Every path below ``root``, absolute, as os.walk sees them."""
    out = set()
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            out.add(os.path.join(d, n))
    return out


def ancestors(path: Path) -> set[str]:
    """``path`` and the folders above it: the snapshot holds them all."""
    return {str(p) for p in [path, *path.parents] if str(p) != "/"}


# --- ls ------------------------------------------------------------------------------------


def test_ls_lists_every_path_and_its_metadata(
    cli: CliRunner, cli_repo: str, sample_tree: Path
) -> None:
    backup(cli, cli_repo, str(sample_tree))
    everything = ancestors(sample_tree) | below(sample_tree)

    plain = ok(cli, "-r", cli_repo, "ls", "latest").stdout.splitlines()
    assert sorted(plain) == sorted(everything)
    assert len(plain) == len(everything)

    lines = ok(cli, "-r", cli_repo, "ls", "latest", "--json").stdout.splitlines()
    items = [json.loads(line) for line in lines[1:]]  # NDJSON: the snapshot, then each item
    by_path = {i["path"]: i for i in items}
    assert set(by_path) == everything
    for path in below(sample_tree):
        st = os.lstat(path)
        item = by_path[path]
        assert item["mode"] == stat.S_IMODE(st.st_mode), path
        assert item["permissions"] == stat.filemode(st.st_mode), path
        assert (item["uid"], item["gid"]) == (st.st_uid, st.st_gid), path
        assert item["mtime_ns"] == st.st_mtime_ns, path
        if stat.S_ISREG(st.st_mode):
            assert (item["type"], item["size"]) == ("file", st.st_size), path
    link = by_path[f"{sample_tree}/link"]
    assert (link["type"], link["target"]) == ("symlink", "hello.txt")
    assert by_path[f"{sample_tree}/sub/data.bin"]["size"] == 3 * 1024 * 1024 + 17
    assert by_path[f"{sample_tree}/hello.txt"]["links"] == 2
    assert by_path[f"{sample_tree}/empty-dir"]["type"] == "dir"

    long = ok(cli, "-r", cli_repo, "ls", "-l", "latest").stdout.splitlines()
    notes = next(line for line in long if line.endswith("/sub/deeper/notes.md"))
    assert notes.startswith("-rw-r----- ") and " 8000 " in notes
    link_line = next(line for line in long if f"{sample_tree}/link" in line)
    assert link_line.startswith("lrwxrwxrwx") and link_line.endswith(" -> hello.txt")


def test_ls_path_lists_children_or_everything_with_recursive(
    cli: CliRunner, cli_repo: str, sample_tree: Path
) -> None:
    backup(cli, cli_repo, str(sample_tree))
    sub = sample_tree / "sub"

    children = ok(cli, "-r", cli_repo, "ls", "latest", str(sub)).stdout.splitlines()
    assert children == [str(sub), f"{sub}/data.bin", f"{sub}/deeper"]

    deep = ok(cli, "-r", cli_repo, "ls", "-R", "latest", str(sub)).stdout.splitlines()
    assert deep == [str(sub), f"{sub}/data.bin", f"{sub}/deeper", f"{sub}/deeper/notes.md"]

    one = ok(cli, "-r", cli_repo, "ls", "latest", f"{sample_tree}/hello.txt").stdout
    assert one.splitlines() == [f"{sample_tree}/hello.txt"]

    missing = cli("-r", cli_repo, "ls", "latest", f"{sample_tree}/nope")
    assert missing.code == USAGE
    assert f"{sample_tree}/nope is not in snapshot" in missing.stderr


# --- diff ----------------------------------------------------------------------------------


def test_diff_names_each_changed_path_once(
    cli: CliRunner, cli_repo: str, sample_tree: Path
) -> None:
    a = backup(cli, cli_repo, str(sample_tree))["snapshot"]
    src = sample_tree
    (src / "new.txt").write_text("new\n")
    (src / "newdir").mkdir()
    (src / "newdir" / "inner.txt").write_text("inner\n")
    (src / "empty.txt").unlink()
    shutil.rmtree(src / "sub" / "deeper")
    with open(src / "sub" / "data.bin", "r+b") as f:
        f.write(b"changed")
    os.chmod(src / "hello.txt", 0o600)  # and hardlink.txt: the same inode
    os.chmod(src / "empty-dir", 0o700)
    b = backup(cli, cli_repo, str(src))["snapshot"]

    doc = json.loads(ok(cli, "-r", cli_repo, "diff", a, b, "--json").stdout)
    assert (doc["a"], doc["b"]) == (a, b)
    kinds: dict[str, set[str]] = {}
    outside = []
    for c in doc["changes"]:
        if c["path"] == str(src) or c["path"].startswith(f"{src}/"):
            kinds.setdefault(c["change"], set()).add(os.path.relpath(c["path"], src))
        else:
            outside.append(c)
    assert kinds == {
        "+": {"new.txt", "newdir", "newdir/inner.txt"},
        "-": {"empty.txt", "sub/deeper", "sub/deeper/notes.md"},
        "M": {"sub/data.bin"},
        "U": {".", "sub", "hello.txt", "hardlink.txt", "empty-dir"},
    }
    # Folders above the backed-up one may differ in their times, nothing more.
    assert all(c["change"] == "U" and c["type"] == "dir" for c in outside)
    summary = doc["summary"]
    assert (summary["added"], summary["removed"], summary["modified"]) == (3, 3, 1)
    assert summary["metadata"] == 5 + len(outside)
    assert summary["type_changed"] == 0
    # Added: the two new files and the first chunk of data.bin (as much as it removed).
    changed_chunk = summary["bytes_removed"] - 8000
    assert 0 < changed_chunk <= 3 * 1024 * 1024 + 17
    assert summary["bytes_added"] == 4 + 6 + changed_chunk

    text = ok(cli, "-r", cli_repo, "diff", a, b).stdout.splitlines()
    assert f"+    {src}/newdir/" in text
    assert f"-    {src}/sub/deeper/notes.md" in text
    assert f"M    {src}/sub/data.bin" in text
    assert f"U    {src}/hello.txt" in text
    assert "3 added, 3 removed, 1 modified" in "\n".join(text)

    same = json.loads(ok(cli, "-r", cli_repo, "diff", b, "latest", "--json").stdout)
    assert same["changes"] == [] and same["b"] == b


def test_diff_of_an_unknown_snapshot_is_a_usage_error(
    cli: CliRunner, cli_repo: str, sample_tree: Path
) -> None:
    backup(cli, cli_repo, str(sample_tree))
    res = cli("-r", cli_repo, "diff", "latest", "ffffffff")
    assert res.code == USAGE
    assert "no snapshot with id 'ffffffff'" in res.stderr


# --- dump ----------------------------------------------------------------------------------


def test_dump_file_writes_its_bytes(
    cli: CliRunner, cli_env: dict[str, str], cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    backup(cli, cli_repo, str(sample_tree))
    original = (sample_tree / "sub" / "data.bin").read_bytes()

    res = raw_cli(cli_env, "-r", cli_repo, "dump", "latest", f"{sample_tree}/sub/data.bin")
    assert res.returncode == 0, res.stderr
    assert res.stdout == original

    out = tmp_path / "out.bin"
    ok(cli, "-r", cli_repo, "dump", "latest", f"{sample_tree}/sub/data.bin", "-o", str(out))
    assert out.read_bytes() == original

    empty = raw_cli(cli_env, "-r", cli_repo, "dump", "latest", f"{sample_tree}/empty.txt")
    assert (empty.returncode, empty.stdout) == (0, b"")


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """What a dump must carry, by path relative to ``root``."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for d, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            p = Path(d, n)
            rel = str(p.relative_to(root))
            st = p.lstat()
            mtime_us = st.st_mtime_ns
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, mtime_us)
            else:
                first = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else rel
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_mode, mtime_us, st.st_size, digest, first)
    return out


def assert_same_state(
    got: dict[str, tuple[object, ...]], want: dict[str, tuple[object, ...]]
) -> None:
    """Equal trees; times may differ by 2 microseconds, since extraction sets them
    through a float."""
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        assert len(g) == len(w) and g[0] == w[0], key
        if w[0] == "link":
            assert g == w, key
            continue
        assert g[:2] == w[:2] and g[3:] == w[3:], key
        assert abs(int(g[2]) - int(w[2])) <= 2000, key  # type: ignore[call-overload]


def test_dump_folder_is_a_tar_of_exactly_the_tree(
    cli: CliRunner, cli_env: dict[str, str], cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    backup(cli, cli_repo, str(sample_tree))
    res = raw_cli(cli_env, "-r", cli_repo, "dump", "latest", str(sample_tree))
    assert res.returncode == 0, res.stderr

    base = str(sample_tree).lstrip("/")
    with tarfile.open(fileobj=io.BytesIO(res.stdout), mode="r:") as tar:
        assert all(m.name.startswith(base) for m in tar)
        hello = tar.getmember(f"{base}/hello.txt")
        assert hello.islnk() and hello.linkname == f"{base}/hardlink.txt"
        notes = tar.getmember(f"{base}/sub/deeper/notes.md")
        assert (notes.mode, notes.uname) == (0o640, tar.getmember(base).uname)
        dest = tmp_path / "extracted"
        tar.extractall(dest, filter="tar")

    # Same names, types, contents, modes, times, symlink target and hard link.
    state = tree_state(sample_tree)
    assert_same_state(tree_state(dest / base), state)
    assert state["hello.txt"][5] == "hardlink.txt"  # the comparison covered the link
    got_dir = dest / base / "sub"
    # tar extraction sets times through a float: within 2 µs, as for the files above.
    got_ns, want_ns = got_dir.stat().st_mtime_ns, (sample_tree / "sub").stat().st_mtime_ns
    assert abs(got_ns - want_ns) <= 2000

    # Without PATH: the whole snapshot, the folders above the backed-up one included.
    whole = raw_cli(cli_env, "-r", cli_repo, "dump", "latest")
    assert whole.returncode == 0, whole.stderr
    with tarfile.open(fileobj=io.BytesIO(whole.stdout), mode="r:") as tar:
        names = set(tar.getnames())
    assert names == {p.lstrip("/") for p in ancestors(sample_tree) | below(sample_tree)}


def test_dump_of_a_missing_path_fails_clearly(
    cli: CliRunner, cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    backup(cli, cli_repo, str(sample_tree))
    res = cli("-r", cli_repo, "dump", "latest", f"{sample_tree}/no/such/file")
    assert res.code == USAGE
    assert f"{sample_tree}/no/such/file is not in snapshot" in res.stderr
    assert res.stdout == ""

    out = tmp_path / "never.tar"
    res = cli("-r", cli_repo, "dump", "latest", f"{sample_tree}/nope", "-o", str(out))
    assert res.code == USAGE
    assert not out.exists()  # no partial output left behind


# --- stats ---------------------------------------------------------------------------------


def test_stats_agree_with_the_files_and_the_storage(
    cli: CliRunner, cli_repo: str, sample_tree: Path
) -> None:
    first = backup(cli, cli_repo, str(sample_tree))["snapshot"]

    files = others = 0
    dirs = len(ancestors(sample_tree))
    sizes: dict[int, int] = {}
    contents: dict[str, int] = {}
    for path in below(sample_tree):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            files += 1
            sizes[st.st_ino] = st.st_size
            contents[hashlib.sha256(Path(path).read_bytes()).hexdigest()] = st.st_size
        elif stat.S_ISDIR(st.st_mode):
            dirs += 1
        else:
            others += 1

    one = json.loads(ok(cli, "-r", cli_repo, "stats", first[:8], "--json").stdout)
    rs = one["restore_size"]
    assert (rs["snapshots"], rs["files"], rs["dirs"], rs["others"]) == (1, files, dirs, others)
    assert rs["bytes"] == sum(sizes.values())  # hello.txt and hardlink.txt: once
    assert one["raw_data"]["data_raw_bytes"] == sum(contents.values())
    assert one["repository"] is None
    assert one["dedup_ratio"] == 1.0

    backup(cli, cli_repo, str(sample_tree), "--force")  # the same data again
    whole = json.loads(ok(cli, "-r", cli_repo, "stats", "--json").stdout)
    assert whole["restore_size"]["bytes"] == 2 * sum(sizes.values())
    assert whole["restore_size"]["files"] == 2 * files
    assert whole["raw_data"]["data_raw_bytes"] == sum(contents.values())
    assert whole["dedup_ratio"] == 2.0
    packs = [Path(d, n) for d, _, ns in os.walk(Path(cli_repo, "data")) for n in ns]
    repo_totals = whole["repository"]
    assert (repo_totals["snapshots"], repo_totals["chains"]) == (2, 1)
    assert repo_totals["packs"] == len(packs)
    assert repo_totals["pack_bytes"] == sum(p.stat().st_size for p in packs)
    raw = whole["raw_data"]
    assert 0 < raw["stored_bytes"] <= repo_totals["pack_bytes"]
    assert whole["compression_ratio"] == raw["raw_bytes"] / raw["stored_bytes"]

    size_only = json.loads(
        ok(cli, "-r", cli_repo, "stats", "--mode", "restore-size", "--json").stdout
    )
    assert size_only["raw_data"] is None and size_only["dedup_ratio"] is None
    assert size_only["restore_size"] == whole["restore_size"]

    text = ok(cli, "-r", cli_repo, "stats").stdout
    assert "deduplication:      2.00x" in text
    assert "snapshots:          2 in 1 chain(s)" in text


# --- chains --------------------------------------------------------------------------------


def small_source(tmp_path: Path) -> Path:
    src = tmp_path / "small"
    src.mkdir()
    (src / "f").write_text("data\n")
    return src


def chain_positions(cli: CliRunner, repo: str) -> list[tuple[str, int, bool]]:
    return [
        (s["chain"]["id"], s["chain"]["seq"], s["chain"]["isolated"]) for s in snapshots(cli, repo)
    ]


def test_chain_finish_makes_the_next_backup_a_new_full_chain(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = small_source(tmp_path)
    backup(cli, cli_repo, str(src))
    backup(cli, cli_repo, str(src))
    positions = chain_positions(cli, cli_repo)
    c1 = positions[0][0]
    assert positions == [(c1, 0, False), (c1, 1, False)]

    [chain] = json.loads(ok(cli, "-r", cli_repo, "chain", "list", "--json").stdout)
    assert (chain["id"], chain["status"]) == (c1, "open")
    assert [(s["seq"], s["position"]) for s in chain["snapshots"]] == [
        (0, "full"),
        (1, "incremental"),
    ]

    done = json.loads(ok(cli, "-r", cli_repo, "chain", "finish", "--json").stdout)
    assert (done["id"], done["already_finished"]) == (c1, False)
    [chain] = json.loads(ok(cli, "-r", cli_repo, "chain", "list", "--json").stdout)
    assert chain["status"] == "finished"

    third = backup(cli, cli_repo, str(src))
    assert third["chain_seq"] == 0 and third["chain"] != c1
    assert chain_positions(cli, cli_repo)[2] == (third["chain"], 0, False)
    fourth = backup(cli, cli_repo, str(src))
    assert (fourth["chain"], fourth["chain_seq"]) == (third["chain"], 1)

    # By chain id prefix, and by snapshot id.
    again = ok(cli, "-r", cli_repo, "chain", "finish", c1[:10])
    assert "already finished" in again.stdout
    ok(cli, "-r", cli_repo, "chain", "finish", fourth["snapshot"][:12])
    statuses = {
        c["id"]: c["status"]
        for c in json.loads(ok(cli, "-r", cli_repo, "chain", "list", "--json").stdout)
    }
    assert statuses == {c1: "finished", third["chain"]: "finished"}

    unknown = cli("-r", cli_repo, "chain", "finish", "0000000000000000ffff")
    assert unknown.code == USAGE
    assert "no snapshot or chain id starts with" in unknown.stderr

    # An isolated snapshot's chain has nothing to finish: refused, nothing written.
    lone = json.loads(ok(cli, "-r", cli_repo, "backup", "--isolated", "--json", str(src)).stdout)
    refused = cli("-r", cli_repo, "chain", "finish", lone["snapshot"][:12])
    assert refused.code == USAGE and "isolated" in refused.stderr
    listed = json.loads(ok(cli, "-r", cli_repo, "chain", "list", "--json").stdout)
    assert {c["id"]: c["status"] for c in listed}[lone["chain"]] == "isolated"


def test_chain_length_starts_a_new_chain_after_n_incrementals(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = small_source(tmp_path)
    for _ in range(4):
        backup(cli, cli_repo, str(src), "--chain-length", "2")
    positions = chain_positions(cli, cli_repo)
    assert [seq for _, seq, _ in positions] == [0, 1, 2, 0]
    chains = [c for c, _, _ in positions]
    assert chains[0] == chains[1] == chains[2] != chains[3]

    listed = json.loads(ok(cli, "-r", cli_repo, "chain", "list", "--json").stdout)
    assert [[s["seq"] for s in c["snapshots"]] for c in listed] == [[0, 1, 2], [0]]


def test_isolated_backup_gets_a_chain_of_its_own(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = small_source(tmp_path)
    backup(cli, cli_repo, str(src))
    iso = backup(cli, cli_repo, str(src), "--isolated")
    backup(cli, cli_repo, str(src))
    positions = chain_positions(cli, cli_repo)
    c1, ci = positions[0][0], iso["chain"]
    assert positions == [(c1, 0, False), (ci, 0, True), (c1, 1, False)]
    assert ci != c1

    listed = json.loads(ok(cli, "-r", cli_repo, "chain", "list", "--json").stdout)
    assert [(c["id"], c["status"]) for c in listed] == [(c1, "open"), (ci, "isolated")]
    text = ok(cli, "-r", cli_repo, "chain", "list").stdout
    assert f"chain {ci[:8]}  isolated" in text
