"""``safehold forget``, ``prune`` and ``unlock`` as a user runs them: real processes, a real
repository folder, restores compared byte for byte."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from safehold.repository import lock as lockmod
from safehold.repository.format import T_LOCK, seal_object
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD, CliRunner


def backup(cli: CliRunner, repo: str, path: Path, *extra: str) -> str:
    res = cli("-r", repo, "backup", "--json", *extra, str(path))
    assert res.code == 0, res.output
    snap_id: str = json.loads(res.stdout)["snapshot"]
    return snap_id


def snapshot_ids(cli: CliRunner, repo: str) -> list[str]:
    res = cli("-r", repo, "snapshots", "--json")
    assert res.code == 0, res.output
    return [s["id"] for s in json.loads(res.stdout)]


def tree_state(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file and folder below ``root``: (size, mtime_ns, content) — what a restore must
    reproduce (and what changes when anything in a repository is written)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            st = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, data)
    return out


def contents(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = b"-> " + os.readlink(p).encode()
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = b"<dir>"
    return out


def repo_bytes(repo: str) -> int:
    """Bytes of the packs (files only: folder sizes depend on the file system)."""
    return sum(p.stat().st_size for p in Path(repo, "data").rglob("*") if p.is_file())


def restore(cli: CliRunner, repo: str, snap_id: str, target: Path, src: Path) -> dict[str, bytes]:
    res = cli("-r", repo, "restore", snap_id, "--target", str(target))
    assert res.code == 0, res.output
    return contents(target / str(src).lstrip("/"))


def forget_json(cli: CliRunner, repo: str, *args: str) -> dict[str, Any]:
    res = cli("-r", repo, "forget", "--json", *args)
    assert res.code == 0, res.output
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


# --- forget --------------------------------------------------------------------------------


def test_forget_applies_the_policy_per_group_and_says_why(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("v0")
    h1 = [backup(cli, cli_repo, src, "--host", "h1") for _ in range(3)]
    h2 = [backup(cli, cli_repo, src, "--host", "h2") for _ in range(2)]

    doc = forget_json(cli, cli_repo, "--keep-last", "2", "--keep-tag", "gold")

    groups = {g["group"]["host"]: g for g in doc["groups"]}
    assert set(groups) == {"h1", "h2"}
    assert groups["h1"]["group"]["paths"] == [str(src)]
    assert [s["id"] for s in groups["h1"]["keep"]] == [h1[2], h1[1]]
    assert [s["id"] for s in groups["h1"]["remove"]] == [h1[0]]
    assert [s["id"] for s in groups["h2"]["keep"]] == [h2[1], h2[0]]
    assert groups["h2"]["remove"] == []
    assert groups["h1"]["reasons"] == {h1[2]: ["last snapshot"], h1[1]: ["last snapshot"]}
    assert groups["h1"]["keep"][0]["reasons"] == ["last snapshot"]
    assert doc["removed"] == [h1[0]] and doc["dry_run"] is False and doc["prune"] is None
    assert sorted(snapshot_ids(cli, cli_repo)) == sorted(h1[1:] + h2)

    # Text output: per group, kept snapshots with their reasons, then the removed ones.
    res = cli("-r", cli_repo, "forget", "--keep-last", "1", "--group-by", "none", "--dry-run")
    assert res.code == 0, res.output
    assert f"keep 1 snapshot(s):\n  {h2[1][:8]}" in res.stdout
    assert "last snapshot" in res.stdout
    assert "remove 3 snapshot(s):" in res.stdout
    assert "would remove 3 snapshot(s)" in res.stdout
    assert "snapshots for" not in res.stdout  # one group: no group header


def test_forget_dry_run_changes_nothing(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / "f").write_text("x" * (i + 1))
        backup(cli, cli_repo, src)
    before = tree_state(Path(cli_repo))

    doc = forget_json(cli, cli_repo, "--keep-last", "1", "--dry-run", "--prune")

    assert doc["dry_run"] is True and len(doc["removed"]) == 2
    assert doc["prune"]["dry_run"] is True
    assert tree_state(Path(cli_repo)) == before


def test_forget_by_id_removes_exactly_those(cli: CliRunner, cli_repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ids = []
    for i in range(3):
        (src / "f").write_text("y" * (i + 1))
        ids.append(backup(cli, cli_repo, src))

    res = cli("-r", cli_repo, "forget", ids[1][:10], ids[0])

    assert res.code == 0, res.output
    assert "removed 2 snapshot(s)" in res.stdout
    assert snapshot_ids(cli, cli_repo) == [ids[2]]
    missing = cli("-r", cli_repo, "forget", ids[0])
    assert missing.code == 2 and "no snapshot with id" in missing.stderr


def test_forget_without_a_rule_refuses_and_keeps_everything(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("z")
    snap = backup(cli, cli_repo, src)
    for args in ([], ["--keep-last", "0"], ["--host", "h1"], ["--prune"]):
        res = cli("-r", cli_repo, "forget", *args)
        assert res.code == 2, (args, res.output)
        assert "refusing to remove every snapshot" in res.stderr
    both = cli("-r", cli_repo, "forget", "--keep-last", "1", snap)
    assert both.code == 2 and "not both" in both.stderr
    within = cli("-r", cli_repo, "forget", "--keep-within", "3 days")
    assert within.code == 2 and "invalid duration" in within.stderr
    grouped = cli("-r", cli_repo, "forget", "--keep-last", "1", "--group-by", "colour")
    assert grouped.code == 2 and "cannot group snapshots by 'colour'" in grouped.stderr
    assert snapshot_ids(cli, cli_repo) == [snap]


# --- forget --prune and prune ------------------------------------------------------------------


def test_forget_prune_frees_space_and_every_remaining_snapshot_restores(
    cli: CliRunner, cli_repo: str, sample_tree: Path, tmp_path: Path
) -> None:
    states = {}
    for i in range(3):
        (sample_tree / "sub" / "data.bin").write_bytes(os.urandom(1024 * 1024 + i))
        (sample_tree / f"added-{i}.txt").write_text(f"file {i}\n")
        snap = backup(cli, cli_repo, sample_tree)
        states[snap] = contents(sample_tree)
    ids = list(states)
    before = repo_bytes(cli_repo)

    doc = forget_json(cli, cli_repo, "--keep-last", "2", "--prune")

    assert doc["removed"] == [ids[0]]
    pruned = doc["prune"]
    assert pruned["packs_deleted"] > 0 and pruned["bytes_pending"] == 0
    after = repo_bytes(cli_repo)
    assert after < before - 1_000_000
    assert after == before - pruned["bytes_freed"] + pruned["mark"]["bytes_written"]
    assert not any(Path(cli_repo, "trash").iterdir())
    for snap in ids[1:]:
        restored = restore(cli, cli_repo, snap, tmp_path / f"r-{snap[:8]}", sample_tree)
        assert restored == states[snap]
    check = cli("-r", cli_repo, "check")
    assert check.code == 0, check.output


def test_prune_dry_run_deletes_nothing_then_prune_frees(
    cli: CliRunner, cli_repo: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(700_000))
    old = backup(cli, cli_repo, src)
    (src / "big").write_bytes(os.urandom(600_000))
    new = backup(cli, cli_repo, src)
    expected = contents(src)
    assert cli("-r", cli_repo, "forget", old).code == 0
    before = tree_state(Path(cli_repo))
    before_bytes = repo_bytes(cli_repo)

    dry = cli("-r", cli_repo, "prune", "--dry-run")
    assert dry.code == 0, dry.output
    assert "would be freed" in dry.stdout
    assert tree_state(Path(cli_repo)) == before

    res = cli("-r", cli_repo, "prune", "--json", "--lock-skew", "0", "--max-unused", "5%")
    assert res.code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["dry_run"] is False
    assert doc["bytes_freed"] > 600_000 and doc["packs_pending"] == 0
    assert repo_bytes(cli_repo) < before_bytes - 600_000
    assert restore(cli, cli_repo, new, tmp_path / "restored", src) == expected

    text = cli("-r", cli_repo, "prune")
    assert text.code == 0 and "no unused data" in text.stdout
    bad = cli("-r", cli_repo, "prune", "--max-unused", "150%")
    assert bad.code == 2


# --- unlock --------------------------------------------------------------------------------


def _put_lock(storage: LocalStorage, repo: Repository, name: str, pid: int) -> None:
    now = repo.clock.now()
    info = lockmod.LockInfo(
        name=name,
        created=now,
        refreshed=now,
        hostname=socket.gethostname(),
        pid=pid,
        exclusive=False,
        kind="backup",
        holder=lockmod.this_holder(),  # as if taken here: a dead PID then makes it stale
    )
    storage.put(name, seal_object(repo.aead, T_LOCK, json.dumps(info.to_json()).encode()))


def test_unlock_removes_stale_locks_and_all_locks_on_request(cli: CliRunner, cli_repo: str) -> None:
    storage = LocalStorage(Path(cli_repo))
    repo = Repository.open(storage, PASSWORD)
    gone = subprocess.Popen(["true"])
    gone.wait()
    _put_lock(storage, repo, "locks/" + "0" * 32, gone.pid)  # its process has exited
    _put_lock(storage, repo, "locks/" + "1" * 32, os.getpid())  # this test: alive

    res = cli("-r", cli_repo, "unlock")
    assert res.code == 0, res.output
    assert "removed 1 lock" in res.stdout
    assert [o.name for o in storage.list("locks/")] == ["locks/" + "1" * 32]

    res = cli("-r", cli_repo, "unlock", "--json")
    assert json.loads(res.stdout) == {"removed": 0}

    res = cli("-r", cli_repo, "unlock", "--remove-all")
    assert res.code == 0 and "removed 1 lock" in res.stdout
    assert list(storage.list("locks/")) == []


def test_prune_removes_temp_files_of_interrupted_writes(cli: CliRunner, cli_repo: str) -> None:
    """A writer killed mid-put leaves a hidden temporary file; prune removes it once it is
    old, and leaves a fresh one (a write that may still be in progress) alone."""
    folder = Path(cli_repo) / "data" / "ab"
    folder.mkdir(parents=True, exist_ok=True)
    old, fresh = folder / ".tmp-killed", folder / ".tmp-writing"
    old.write_bytes(b"half a pack")
    fresh.write_bytes(b"half a pack")
    two_days_ago = os.stat(old).st_mtime - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))

    res = cli("-r", cli_repo, "prune", "--json")

    assert res.code == 0, res.output
    assert json.loads(res.stdout)["temp_files_removed"] == 1
    assert not old.exists() and fresh.exists()
    res = cli("-r", cli_repo, "prune")
    assert res.code == 0, res.output
    assert "temporary file" not in res.stdout  # nothing more to remove: no line
