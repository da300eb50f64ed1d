"""``check`` and ``repair index`` through the real command line, on repositories made by
``init`` and ``backup`` and then damaged on disk: a corrupt pack or index is named, check
finds it, and the snapshots that do not need it still restore bit for bit."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from safehold.engine.tree_walk import find, walk
from safehold.repository.format import T_INDEX
from safehold.repository.index import Location, decode_index
from safehold.repository.repository import Repository, pack_name
from safehold.repository.snapshot import Snapshot
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD, CliResult, CliRunner

USAGE = 2
INTEGRITY = 4


@dataclass
class Scene:
    repo: str  # the repository's folder
    src: Path  # backed up twice (one chain)
    other: Path  # backed up once, --isolated
    first: str
    second: str
    isolated: str
    first_files: dict[str, bytes]

    def open(self) -> Repository:
        repo = Repository.open(LocalStorage(Path(self.repo)), PASSWORD)
        repo.load_index()
        return repo


def ok(res: CliResult) -> CliResult:
    assert res.code == 0, res.output
    return res


def _write_tree(root: Path, seed: int) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + seed))
    (root / "sub" / "notes.txt").write_text(f"notes {seed}\n" * 500)
    (root / "sub" / "small.bin").write_bytes(os.urandom(700 * 1024))
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _backup(cli: CliRunner, repo: str, *args: str) -> str:
    res = ok(cli("-r", repo, "backup", "--json", "--threads", "3", *args))
    snap_id: str = json.loads(res.stdout)["snapshot"]
    return snap_id


@pytest.fixture
def scene(cli: CliRunner, cli_repo: str, tmp_path: Path) -> Scene:
    src = _write_tree(tmp_path / "src", 1)
    other = _write_tree(tmp_path / "other", 2)
    first = _backup(cli, cli_repo, str(src))
    first_files = _files(src)
    (src / "sub" / "notes.txt").write_text("changed\n" * 700)
    second = _backup(cli, cli_repo, str(src))
    isolated = _backup(cli, cli_repo, "--isolated", str(other))
    return Scene(cli_repo, src, other, first, second, isolated, first_files)


def check(cli: CliRunner, scene: Scene, *args: str) -> tuple[int, dict[str, Any]]:
    res = cli("-r", scene.repo, "check", "--json", *args)
    assert res.code in (0, INTEGRITY), res.output
    doc: dict[str, Any] = json.loads(res.stdout)
    assert doc["ok"] == (res.code == 0)
    return res.code, doc


def restore(cli: CliRunner, scene: Scene, snap_id: str, target: Path) -> CliResult:
    return cli("-r", scene.repo, "restore", snap_id, "--target", str(target))


def restored(target: Path, src: Path) -> dict[str, bytes]:
    return _files(target / str(src).lstrip("/"))


def _snapshot(repo: Repository, snap_id: str) -> Snapshot:
    return repo.find_snapshot(snap_id)


def _data_location(repo: Repository, snap_id: str, path: str) -> Location:
    found = find(repo, _snapshot(repo, snap_id).tree, path)
    assert found is not None and found[1].content
    loc = repo.index.lookup(bytes.fromhex(found[1].content[0]))
    assert loc is not None
    return loc


def _packs_of(repo: Repository, snap_id: str) -> set[bytes]:
    snap = _snapshot(repo, snap_id)
    ids = [bytes.fromhex(snap.tree)]
    for _path, node in walk(repo, snap.tree):
        ids += [bytes.fromhex(node.subtree)] if node.subtree else []
        ids += [bytes.fromhex(c) for c in node.content]
    out = set()
    for blob_id in ids:
        loc = repo.index.lookup(blob_id)
        assert loc is not None
        out.add(loc.pack_id)
    return out


def _paths_using(repo: Repository, snap_id: str, pack: bytes) -> set[str]:
    out = set()
    for path, node in walk(repo, _snapshot(repo, snap_id).tree):
        for c in node.content:
            loc = repo.index.lookup(bytes.fromhex(c))
            if loc is not None and loc.pack_id == pack:
                out.add(path)
    return out


# --- clean ------------------------------------------------------------------------------------


def test_clean_repository(cli: CliRunner, scene: Scene) -> None:
    res = ok(cli("-r", scene.repo, "check"))
    assert "no errors were found" in res.stdout
    assert "3 snapshots" in res.stdout
    res = ok(cli("-r", scene.repo, "check", "--read-data"))
    assert "no errors were found" in res.stdout
    code, doc = check(cli, scene, "--read-data")
    packs = scene.open().list_packs()
    assert code == 0 and doc["errors"] == doc["warnings"] == []
    assert doc["counts"]["packs_read"] == doc["counts"]["packs"] == len(packs)
    assert doc["counts"]["bytes_read"] == sum(packs.values())
    assert doc["counts"]["snapshots"] == 3


# --- a flipped byte ---------------------------------------------------------------------------


def test_flipped_byte_in_a_data_pack(cli: CliRunner, scene: Scene, tmp_path: Path) -> None:
    repo = scene.open()
    loc = _data_location(repo, scene.first, str(scene.src / "big.bin"))
    pack = loc.pack_id
    assert pack not in _packs_of(repo, scene.isolated)
    path = Path(scene.repo) / pack_name(pack)
    raw = bytearray(path.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x01
    path.write_bytes(bytes(raw))

    # Names and sizes are intact: only reading the data can tell.
    ok(cli("-r", scene.repo, "check"))

    res = cli("-r", scene.repo, "check", "--read-data")
    assert res.code == INTEGRITY, res.output
    assert pack_name(pack) in res.stdout
    assert f"snapshot {scene.first[:8]} {scene.src}/big.bin" in res.stdout
    assert f"snapshot {scene.second[:8]} {scene.src}/big.bin" in res.stdout
    assert scene.isolated[:8] not in res.stdout
    assert "error(s)" in res.stderr

    code, doc = check(cli, scene, "--read-data")
    assert code == INTEGRITY
    assert {e["code"] for e in doc["errors"] if e.get("pack") == pack.hex()} >= {
        "pack-hash",
        "blob-damaged",
    }

    bad = restore(cli, scene, scene.first, tmp_path / "bad")
    assert bad.code == INTEGRITY, bad.output
    assert pack_name(pack) in bad.stderr

    ok(restore(cli, scene, scene.isolated, tmp_path / "good"))
    assert restored(tmp_path / "good", scene.other) == _files(scene.other)


# --- index files ------------------------------------------------------------------------------


def _index_listing(repo: Repository, packs: set[bytes]) -> tuple[str, set[bytes]]:
    for name in repo.list_index_files():
        listed = {r.pack_id for r in decode_index(repo.load_object(name, T_INDEX), name)}
        if listed & packs:
            return name, listed
    raise AssertionError("no index file lists these packs")


def _all_restore(cli: CliRunner, scene: Scene, tmp_path: Path) -> None:
    for snap_id, src, expected in [
        (scene.first, scene.src, scene.first_files),
        (scene.second, scene.src, _files(scene.src)),
        (scene.isolated, scene.other, _files(scene.other)),
    ]:
        target = tmp_path / f"out-{snap_id[:8]}"
        ok(restore(cli, scene, snap_id, target))
        assert restored(target, src) == expected


def test_deleted_index_file_then_repair(cli: CliRunner, scene: Scene, tmp_path: Path) -> None:
    repo = scene.open()
    name, packs = _index_listing(repo, _packs_of(repo, scene.isolated))
    (Path(scene.repo) / name).unlink()

    code, doc = check(cli, scene)
    unindexed = {w["pack"] for w in doc["warnings"] if w["code"] == "pack-unindexed"}
    assert unindexed == {p.hex() for p in packs}
    # Until the index is repaired the isolated snapshot's data cannot be found.
    assert code == INTEGRITY
    assert {e["snapshot"] for e in doc["errors"]} == {scene.isolated}
    assert {e["code"] for e in doc["errors"]} == {"blob-unindexed"}

    res = ok(cli("-r", scene.repo, "repair", "index"))
    assert "indexed" in res.stdout and "removed" in res.stdout
    code, doc = check(cli, scene, "--read-data")
    assert code == 0 and doc["warnings"] == [] and doc["errors"] == []
    _all_restore(cli, scene, tmp_path)


def test_garbage_index_file_then_repair(cli: CliRunner, scene: Scene, tmp_path: Path) -> None:
    repo = scene.open()
    name = repo.list_index_files()[0]
    (Path(scene.repo) / name).write_bytes(b"\x00garbage" * 40)

    res = cli("-r", scene.repo, "check")
    assert res.code == INTEGRITY, res.output
    assert f"error: {name}: the index file is damaged" in res.stdout
    assert "safehold repair index" in res.stdout

    res = ok(cli("-r", scene.repo, "repair", "index", "--json"))
    report = json.loads(res.stdout)
    assert name in report["index_files_removed"]
    assert report["packs"] == len(repo.list_packs()) and report["damaged_packs"] == []
    assert not (Path(scene.repo) / name).exists()

    code, doc = check(cli, scene, "--read-data")
    assert code == 0 and not doc["errors"] and not doc["warnings"]
    _all_restore(cli, scene, tmp_path)


# --- repair keeps what is intact -------------------------------------------------------------


def _header_length(path: Path) -> int:
    tail = path.read_bytes()[-8:]
    return int.from_bytes(tail[:4], "little") + 8


def test_damaged_pack_header_then_repair_loses_nothing(
    cli: CliRunner, scene: Scene, tmp_path: Path
) -> None:
    """The review's case: one byte flipped 200 bytes from the end of a data pack (in its
    header). Restore still works through the index; repair must keep it so."""
    repo = scene.open()
    loc = _data_location(repo, scene.first, str(scene.src / "big.bin"))
    pack = loc.pack_id
    path = Path(scene.repo) / pack_name(pack)
    assert _header_length(path) > 200
    raw = bytearray(path.read_bytes())
    raw[-200] ^= 0x01
    path.write_bytes(bytes(raw))
    blobs = len(repo.index.packs[pack].entries)
    _all_restore(cli, scene, tmp_path / "before")

    res = ok(cli("-r", scene.repo, "repair", "index", "--json"))
    report = json.loads(res.stdout)
    assert report["ok"] and report["lost_blobs"] == 0
    [finding] = report["damaged_packs"]
    assert finding["pack"] == pack_name(pack) and finding["problem"] == "header-damaged"
    assert finding["salvaged"] + finding["elsewhere"] == blobs and finding["lost"] == []
    assert len(report["packs_written"]) == 1 and len(report["index_files_removed"]) == 1
    assert path.read_bytes() == bytes(raw)  # repair deletes no pack

    _all_restore(cli, scene, tmp_path / "after")
    code, doc = check(cli, scene)
    assert code == 0 and doc["errors"] == []
    assert [(w["code"], w["pack"]) for w in doc["warnings"]] == [
        ("pack-unindexed-damaged", pack.hex())
    ]
    # Said in words too, and a second run changes nothing.
    res = ok(cli("-r", scene.repo, "repair", "index"))
    assert pack_name(pack) in res.stdout and "delete them by hand" in res.stdout
    assert "0 written, 0 removed" in res.stdout


def _stored_packs(repo: str) -> set[str]:
    return {p.name for p in (Path(repo) / "data").rglob("*") if len(p.name) == 64}


def test_repair_killed_after_its_new_pack_loses_nothing(
    cli: CliRunner, cli_env: dict[str, str], scene: Scene, tmp_path: Path
) -> None:
    """SIGKILL the moment repair has stored its new pack (before any index file names it),
    as the crash campaign kills backups: every snapshot still restores, and the next run
    finishes the work; the stale lock is no obstacle. A crash before each of repair's other
    writes and deletions: tests/unit/repository/test_repair.py."""
    repo = scene.open()
    loc = _data_location(repo, scene.first, str(scene.src / "big.bin"))
    path = Path(scene.repo) / pack_name(loc.pack_id)
    raw = bytearray(path.read_bytes())
    raw[-_header_length(path) + 10] ^= 0x01
    path.write_bytes(bytes(raw))
    before = _stored_packs(scene.repo)

    argv = [sys.executable, "-m", "safehold", "-r", scene.repo, "repair", "index"]
    proc = subprocess.Popen(argv, env=cli_env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _stored_packs(scene.repo) == before and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Killed (or, on a slow machine, finished just before): everything still restores.
    _all_restore(cli, scene, tmp_path / "killed")

    ok(cli("-r", scene.repo, "repair", "index"))
    _all_restore(cli, scene, tmp_path / "finished")
    code, doc = check(cli, scene)
    assert code == 0 and [w["code"] for w in doc["warnings"]] == ["pack-unindexed-damaged"]


def test_repair_names_what_it_could_not_save(cli: CliRunner, scene: Scene) -> None:
    repo = scene.open()
    loc = _data_location(repo, scene.second, str(scene.src / "sub" / "small.bin"))
    lost = {e.blob_id.hex() for e in repo.index.packs[loc.pack_id].entries}
    (Path(scene.repo) / pack_name(loc.pack_id)).unlink()

    res = cli("-r", scene.repo, "repair", "index", "--json")
    assert res.code == INTEGRITY, res.output
    report = json.loads(res.stdout)
    [finding] = report["damaged_packs"]
    assert finding["problem"] == "missing" and set(finding["lost"]) == lost
    assert not report["ok"] and report["lost_blobs"] == len(lost)
    assert "could not be saved" in res.stderr and "safehold check" in res.stderr

    res = cli("-r", scene.repo, "repair", "index")
    assert res.code == 0, res.output  # dropped already: nothing more is lost
    code, doc = check(cli, scene)
    assert code == INTEGRITY and "pack-missing" not in {e["code"] for e in doc["errors"]}
    assert f"{scene.src}/sub/small.bin" in {e.get("path") for e in doc["errors"]}


def test_read_all_packs_finds_a_damaged_blob(cli: CliRunner, scene: Scene, tmp_path: Path) -> None:
    repo = scene.open()
    loc = _data_location(repo, scene.first, str(scene.src / "big.bin"))
    path = Path(scene.repo) / pack_name(loc.pack_id)
    raw = bytearray(path.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    blob_id = _snapshot_first_blob(repo, scene.first, str(scene.src / "big.bin"))

    res = ok(cli("-r", scene.repo, "repair", "index"))  # headers only: nothing to see
    assert "0 written, 0 removed" in res.stdout

    res = cli("-r", scene.repo, "repair", "index", "--read-all-packs", "--json")
    assert res.code == INTEGRITY, res.output
    report = json.loads(res.stdout)
    [finding] = report["damaged_packs"]
    assert finding["problem"] == "blobs-damaged" and finding["lost"] == [blob_id]
    assert finding["salvaged"] + finding["elsewhere"] == finding["blobs"] - 1
    ok(restore(cli, scene, scene.isolated, tmp_path / "good"))
    assert restored(tmp_path / "good", scene.other) == _files(scene.other)
    code, doc = check(cli, scene)
    assert code == INTEGRITY and {e["code"] for e in doc["errors"]} == {"blob-missing"}
    assert {e["snapshot"] for e in doc["errors"]} == {scene.first, scene.second}


def _snapshot_first_blob(repo: Repository, snap_id: str, path: str) -> str:
    found = find(repo, _snapshot(repo, snap_id).tree, path)
    assert found is not None
    return found[1].content[0]


def test_repair_help_says_what_it_guarantees(cli: CliRunner) -> None:
    res = ok(cli("repair", "index", "--help"))
    assert "--read-all-packs" in res.stdout
    assert "never" in res.stdout and "salvaged" in res.stdout and "left in place" in res.stdout


# --- a lost pack ------------------------------------------------------------------------------


def test_deleted_pack_names_snapshots_and_paths(cli: CliRunner, scene: Scene) -> None:
    repo = scene.open()
    loc = _data_location(repo, scene.second, str(scene.src / "sub" / "small.bin"))
    pack = loc.pack_id
    needed = {
        (snap_id, path)
        for snap_id in (scene.first, scene.second, scene.isolated)
        for path in _paths_using(repo, snap_id, pack)
    }
    assert (scene.second, f"{scene.src}/sub/small.bin") in needed
    (Path(scene.repo) / pack_name(pack)).unlink()

    code, doc = check(cli, scene)
    assert code == INTEGRITY
    [missing] = [e for e in doc["errors"] if e["code"] == "pack-missing" and "snapshot" not in e]
    assert missing["subject"] == pack_name(pack)
    reported = {(e["snapshot"], e["path"]) for e in doc["errors"] if "snapshot" in e}
    assert reported == needed
    res = cli("-r", scene.repo, "check")
    assert f"snapshot {scene.second[:8]} {scene.src}/sub/small.bin" in res.stdout
    assert pack.hex()[:8] in res.stdout


# --- subsets ----------------------------------------------------------------------------------


def test_subset_halves_read_every_pack_once(cli: CliRunner, scene: Scene) -> None:
    packs = scene.open().list_packs()
    even = [p for p in packs if p[0] % 2 == 0]
    _, one = check(cli, scene, "--read-data-subset", "1/2")
    _, two = check(cli, scene, "--read-data-subset", "2/2")
    assert one["read_data"] == "1/2" and two["read_data"] == "2/2"
    assert one["counts"]["packs_read"] == len(even)
    assert two["counts"]["packs_read"] == len(packs) - len(even)
    assert one["counts"]["bytes_read"] + two["counts"]["bytes_read"] == sum(packs.values())


def test_subset_percentage(cli: CliRunner, scene: Scene) -> None:
    packs = scene.open().list_packs()
    _, doc = check(cli, scene, "--read-data-subset", "50%")
    assert doc["counts"]["packs_read"] == math.ceil(len(packs) / 2) < len(packs)
    res = ok(cli("-r", scene.repo, "check", "--read-data-subset", "50%"))
    assert "subset 50%" in res.stdout


@pytest.mark.parametrize("spec", ["0/3", "4/3", "1/0", "abc", "0%", "120%", "1/2/3"])
def test_invalid_subset_is_a_usage_error(cli: CliRunner, cli_repo: str, spec: str) -> None:
    res = cli("-r", cli_repo, "check", "--read-data-subset", spec)
    assert res.code == USAGE, res.output
    assert f"invalid --read-data-subset {spec!r}" in res.stderr
    assert "n/t" in res.stderr


def test_repair_needs_to_know_what(cli: CliRunner, cli_repo: str) -> None:
    res = cli("-r", cli_repo, "repair")
    assert res.code == USAGE
    assert "index" in cli("repair", "--help").stdout
