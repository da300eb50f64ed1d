"""check, check --read-data and the index rebuild, on repositories the real backup engine wrote
into a LocalStorage, damaged the way disks and people damage them."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.verify import run_check, run_repair_index
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.engine.tree_walk import find, walk
from safehold.errors import IntegrityError, RepositoryLocked, UsageError
from safehold.repository import tree as t
from safehold.repository.chains import new_chain_id
from safehold.repository.check import (
    CheckOptions,
    CheckReport,
    Problem,
    Subset,
    check_repository,
    parse_subset,
)
from safehold.repository.format import BLOB_DATA, BLOB_TREE, T_INDEX, T_LOCK, seal_object
from safehold.repository.index import Location, decode_index
from safehold.repository.lock import LockInfo
from safehold.repository.repair import RepairOptions, repair_index
from safehold.repository.repository import Repository, pack_name
from safehold.repository.saver import BlobSaver
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import write_trash
from safehold.storage.local import LocalStorage
from tests.conftest import FAST_KDF, PASSWORD

# Small packs: every ~1 MiB chunk gets a pack of its own, so a repository has many.
PACK_SIZE = 128 * 1024
READ_ALL = CheckOptions(read_data=True)


@dataclass
class Scene:
    repo: Repository
    root: Path  # the repository's folder
    src: Path  # backed up twice, in one chain
    other: Path  # backed up once, --isolated
    first: Snapshot
    second: Snapshot
    isolated: Snapshot
    first_files: dict[str, bytes]  # src as the first snapshot saw it

    @property
    def big(self) -> str:
        """The file both snapshots of ``src`` share, unchanged."""
        return str(self.src / "big.bin")


def _write_tree(root: Path, seed: int) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + seed))
    (root / "sub" / "notes.txt").write_text(f"notes {seed}\n" * 500)
    (root / "sub" / "small.bin").write_bytes(os.urandom(700 * 1024))
    return root


def _backup(repo: Repository, path: Path, **kw: object) -> Snapshot:
    opts = BackupOptions(paths=[str(path)], threads=2, **kw)  # type: ignore[arg-type]
    return run_backup(repo, opts).snapshot


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    root = tmp_path / "repo"
    repo = Repository.init(
        LocalStorage(root, create=True), PASSWORD, kdf=FAST_KDF, pack_size=PACK_SIZE
    )
    src = _write_tree(tmp_path / "src", 1)
    other = _write_tree(tmp_path / "other", 2)
    first = _backup(repo, src)
    first_files = _files(src)
    (src / "sub" / "notes.txt").write_text("changed\n" * 700)
    second = _backup(repo, src)
    isolated = _backup(repo, other, isolated=True)
    assert second.chain == first.chain and isolated.chain != first.chain
    return Scene(repo, root, src, other, first, second, isolated, first_files)


def _reopen(scene: Scene) -> Repository:
    """A fresh process's view of the repository (no index in memory)."""
    return Repository.open(LocalStorage(scene.root), PASSWORD)


def _check(scene: Scene, opts: CheckOptions | None = None) -> CheckReport:
    return run_check(_reopen(scene), opts)


def _codes(problems: list[Problem]) -> set[str]:
    return {p.code for p in problems}


def _blob_location(repo: Repository, snap: Snapshot, path: str) -> tuple[bytes, Location]:
    """The first data blob of the file at ``path`` and where the index keeps it."""
    if not repo.index_loaded:
        repo.load_index()
    found = find(repo, snap.tree, path)
    assert found is not None and found[1].content
    blob_id = bytes.fromhex(found[1].content[0])
    loc = repo.index.lookup(blob_id)
    assert loc is not None and loc.blob_type == BLOB_DATA
    return blob_id, loc


def _pack_file(scene: Scene, pack_id: bytes) -> Path:
    return scene.root / pack_name(pack_id)


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def _snapshot_packs(repo: Repository, snap: Snapshot) -> set[bytes]:
    """Every pack a restore of ``snap`` reads (trees and data)."""
    if not repo.index_loaded:
        repo.load_index()
    ids = [bytes.fromhex(snap.tree)]
    for _path, node in walk(repo, snap.tree):
        ids += [bytes.fromhex(node.subtree)] if node.subtree else []
        ids += [bytes.fromhex(c) for c in node.content]
    packs = set()
    for blob_id in ids:
        loc = repo.index.lookup(blob_id)
        assert loc is not None
        packs.add(loc.pack_id)
    return packs


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _restores_identically(
    repo: Repository, snap: Snapshot, src: Path, target: Path, expected: dict[str, bytes]
) -> bool:
    run_restore(repo, snap, RestoreOptions(target=str(target)))
    return _files(target / str(src).lstrip("/")) == expected


def _paths_using(repo: Repository, snap: Snapshot, pack: bytes) -> set[str]:
    """The files of ``snap`` with data in ``pack``."""
    return {
        path
        for path, node in walk(repo, snap.tree)
        if any(repo.index.lookup(bytes.fromhex(c)).pack_id == pack for c in node.content)  # type: ignore[union-attr]
    }


# --- a healthy repository ---------------------------------------------------------------------


def test_clean_repository_passes_and_read_data_reads_every_pack(scene: Scene) -> None:
    report = _check(scene, READ_ALL)
    assert report.problems == [], [str(p) for p in report.problems]
    assert report.ok
    packs = scene.repo.list_packs()
    assert len(packs) >= 8  # small packs: the scene is not trivially one pack
    assert report.snapshots == 3
    assert report.packs == len(packs)
    assert report.index_files == len(scene.repo.list_index_files())
    assert sorted(report.read_pack_ids) == sorted(packs)
    assert report.packs_read == len(packs)
    assert report.bytes_read == sum(packs.values())
    assert report.read_data == "all"
    # Every distinct tree and data blob the snapshots reference was looked at.
    repo = _reopen(scene)
    repo.load_index()
    trees, blobs = set(), set()
    for snap in (scene.first, scene.second, scene.isolated):
        trees.add(snap.tree)
        for _path, node in walk(repo, snap.tree):
            trees.update([node.subtree] if node.subtree else [])
            blobs.update(node.content)
    assert (report.trees, report.blobs) == (len(trees), len(blobs))


def test_structure_check_reads_no_pack_data(scene: Scene) -> None:
    report = _check(scene)
    assert report.ok and not report.problems
    assert (report.packs_read, report.bytes_read, report.read_data) == (0, 0, "")
    assert report.to_json()["read_data"] is None


def test_report_json_is_plain_data(scene: Scene) -> None:
    doc = json.loads(json.dumps(_check(scene, READ_ALL).to_json()))
    assert doc["ok"] is True
    assert doc["counts"]["snapshots"] == 3
    assert doc["counts"]["packs_read"] == doc["counts"]["packs"]
    assert doc["read_data"] == "all"
    assert doc["errors"] == doc["warnings"] == doc["notes"] == []


# --- damaged data -----------------------------------------------------------------------------


def test_flipped_byte_in_a_blob_is_found_by_read_data_only(scene: Scene, tmp_path: Path) -> None:
    blob_id, loc = _blob_location(scene.repo, scene.first, scene.big)
    pack = loc.pack_id
    _flip(_pack_file(scene, pack), loc.offset + loc.length // 2)

    assert _check(scene).ok  # the structure is intact: same name, same size

    report = _check(scene, READ_ALL)
    assert not report.ok
    by_pack = [p for p in report.errors if p.pack == pack.hex()]
    assert {"pack-hash", "blob-damaged"} <= _codes(by_pack)
    assert all(p.subject == pack_name(pack) for p in by_pack if not p.snapshot)
    # Both snapshots of src need the blob; the isolated snapshot is untouched.
    needing = [p for p in report.errors if p.snapshot]
    assert {p.snapshot for p in needing} == {scene.first.id, scene.second.id}
    assert {(p.code, p.path) for p in needing} == {("blob-damaged", scene.big)}
    assert all(blob_id.hex()[:8] in p.message for p in needing)
    assert scene.isolated.id not in json.dumps(report.to_json())

    repo = _reopen(scene)
    with pytest.raises(IntegrityError) as err:
        run_restore(repo, scene.first, RestoreOptions(target=str(tmp_path / "bad")))
    assert pack_name(pack) in str(err.value) and blob_id.hex()[:8] in str(err.value)
    assert pack not in _snapshot_packs(repo, scene.isolated)
    assert _restores_identically(
        repo, scene.isolated, scene.other, tmp_path / "good", _files(scene.other)
    )


def test_flipped_byte_in_a_pack_header_spares_the_blobs(scene: Scene) -> None:
    _blob_id, loc = _blob_location(scene.repo, scene.first, scene.big)
    path = _pack_file(scene, loc.pack_id)
    _flip(path, path.stat().st_size - 20)  # inside the sealed header

    report = _check(scene, READ_ALL)
    assert _codes(report.errors) == {"pack-hash", "pack-header"}
    assert {p.pack for p in report.errors} == {loc.pack_id.hex()}

    # The index cannot be rebuilt from that pack, but its blobs still open: repair copies
    # them into a new pack and leaves the damaged one out of the index (and in place).
    rebuilt = repair_index(_reopen(scene))
    assert [f.pack for f in rebuilt.findings] == [pack_name(loc.pack_id)]
    assert rebuilt.ok and rebuilt.findings[0].salvaged >= 1 and not rebuilt.findings[0].lost
    after = _check(scene)
    assert after.ok and _codes(after.warnings) == {"pack-unindexed-damaged"}
    assert path.exists()


def test_damaged_tree_is_found_without_reading_data(scene: Scene) -> None:
    repo = _reopen(scene)
    repo.load_index()
    found = find(repo, scene.second.tree, str(scene.src / "sub"))
    assert found is not None
    tree_id = bytes.fromhex(found[1].subtree)
    loc = repo.index.lookup(tree_id)
    assert loc is not None and loc.blob_type == BLOB_TREE
    _flip(_pack_file(scene, loc.pack_id), loc.offset + loc.length // 2)

    report = _check(scene)
    damaged = [p for p in report.errors if p.code == "tree-damaged"]
    assert damaged and {p.path for p in damaged} == {str(scene.src / "sub")}
    assert scene.second.id in {p.snapshot for p in damaged}
    assert all(pack_name(loc.pack_id) in p.message for p in damaged)


def test_missing_pack_names_the_snapshots_and_paths_that_need_it(scene: Scene) -> None:
    _blob_id, loc = _blob_location(scene.repo, scene.first, scene.big)
    _pack_file(scene, loc.pack_id).unlink()
    assert loc.pack_id not in _snapshot_packs(scene.repo, scene.isolated)

    report = _check(scene)
    [missing] = [p for p in report.errors if not p.snapshot]
    assert (missing.code, missing.subject) == ("pack-missing", pack_name(loc.pack_id))
    index_file = next(
        name
        for name in scene.repo.list_index_files()
        if any(
            rec.pack_id == loc.pack_id
            for rec in decode_index(scene.repo.load_object(name, T_INDEX), name)
        )
    )
    assert index_file in missing.message
    needing = [p for p in report.errors if p.snapshot]
    assert {(p.snapshot, p.path, p.code, p.pack) for p in needing} == {
        (s.id, path, "pack-missing", loc.pack_id.hex())
        for s in (scene.first, scene.second)
        for path in _paths_using(scene.repo, s, loc.pack_id)
    }
    assert scene.big in {p.path for p in needing}


def test_pack_with_the_wrong_size(scene: Scene) -> None:
    _blob_id, loc = _blob_location(scene.repo, scene.second, scene.big)
    with _pack_file(scene, loc.pack_id).open("ab") as f:
        f.write(b"tail")
    report = _check(scene)
    assert "pack-size" in _codes(report.errors)
    assert pack_name(loc.pack_id) in {p.subject for p in report.errors}


# --- the index --------------------------------------------------------------------------------


def _index_of_snapshot(scene: Scene, snap: Snapshot) -> tuple[str, set[bytes]]:
    """The index file written by the backup that made ``snap``, and its packs."""
    repo = scene.repo
    packs = _snapshot_packs(repo, snap)
    for name in repo.list_index_files():
        listed = {r.pack_id for r in decode_index(repo.load_object(name, T_INDEX), name)}
        if listed & packs:
            return name, listed
    raise AssertionError("no index file lists the snapshot's packs")


def test_deleted_index_file_then_repair(scene: Scene, tmp_path: Path) -> None:
    name, packs = _index_of_snapshot(scene, scene.isolated)
    (scene.root / name).unlink()

    report = _check(scene)
    unindexed = [p for p in report.warnings if p.code == "pack-unindexed"]
    assert {bytes.fromhex(p.pack) for p in unindexed} == packs
    assert all("index file was lost" in p.message for p in unindexed)
    # The isolated snapshot cannot be restored until the index is repaired.
    assert {p.snapshot for p in report.errors} == {scene.isolated.id}
    assert _codes(report.errors) == {"blob-unindexed"}

    old = set(scene.repo.list_index_files())
    result = run_repair_index(_reopen(scene))
    assert set(result.kept) == old and not result.removed  # the others were sound
    assert result.adopted == len(packs) and len(result.written) == 1
    assert result.packs == len(scene.repo.list_packs()) and not result.findings
    assert set(scene.repo.list_index_files()) == old | set(result.written)

    after = _check(scene, READ_ALL)
    assert after.ok and not after.problems, [str(p) for p in after.problems]
    repo = _reopen(scene)
    for i, (snap, src, expected) in enumerate(
        [
            (scene.first, scene.src, scene.first_files),
            (scene.second, scene.src, _files(scene.src)),
            (scene.isolated, scene.other, _files(scene.other)),
        ]
    ):
        assert _restores_identically(repo, snap, src, tmp_path / f"out{i}", expected)


def test_garbage_index_file_is_named_and_repaired(scene: Scene) -> None:
    name = scene.repo.list_index_files()[0]
    (scene.root / name).write_bytes(os.urandom(300))

    report = _check(scene)
    damaged = [p for p in report.errors if p.code == "index-damaged"]
    assert [p.subject for p in damaged] == [name]

    run_repair_index(_reopen(scene))
    assert name not in scene.repo.list_index_files()
    after = _check(scene, READ_ALL)
    assert after.ok and not after.problems


def test_rebuild_writes_batches_and_the_same_index(scene: Scene) -> None:
    before = _reopen(scene)
    before.load_index()
    for name in before.list_index_files():
        (scene.root / name).unlink()  # all lost: every pack is adopted from its header
    repo = _reopen(scene)
    result = repair_index(repo, RepairOptions(batch=3))
    assert len(result.written) == math.ceil(len(before.index.packs) / 3)
    after = _reopen(scene)
    after.load_index()
    assert after.index.packs == before.index.packs
    assert repo.index.packs == before.index.packs  # the rebuilt index is the one in use
    assert result.blobs == before.index.blob_count()


def test_interrupted_backup_leaves_a_warning_and_trash_is_ignored(scene: Scene) -> None:
    repo = _reopen(scene)
    repo.load_index()
    saver = BlobSaver(repo, os.urandom(16))
    saver.save(BLOB_DATA, os.urandom(2000))
    [rec] = saver.flush()  # uploaded, never indexed: a backup killed before its index
    saver.abort()

    report = _check(scene)
    assert report.ok
    [warning] = report.warnings
    assert (warning.code, warning.pack) == ("pack-unindexed", rec.pack_id.hex())
    assert "interrupted backup" in warning.message

    write_trash(repo, [rec.pack_id])
    assert not _check(scene).problems
    assert rec.pack_id not in _check(scene, READ_ALL).read_pack_ids
    skipped = repair_index(_reopen(scene))
    assert skipped.trash_skipped == 1 and skipped.packs == len(repo.list_packs()) - 1
    included = repair_index(_reopen(scene), RepairOptions(include_trash=True))
    assert included.trash_skipped == 0 and included.packs == len(repo.list_packs())


# --- snapshots, chains, keys, locks -----------------------------------------------------------


def test_snapshot_relying_on_another_chain_is_named(scene: Scene) -> None:
    # A snapshot whose trees and data live only in another chain's packs: forgetting that
    # chain would take its data away.
    stray = replace(scene.second, chain=new_chain_id(), id="")
    scene.repo.save_snapshot(stray)
    report = _check(scene)
    assert {p.snapshot for p in report.errors} == {stray.id}
    assert _codes(report.errors) == {"blob-other-chain"}
    paths = {p.path for p in report.errors}
    assert "/" in paths and scene.big in paths
    assert all(stray.chain[:8] in p.message for p in report.errors)


def test_damaged_snapshot_is_named(scene: Scene) -> None:
    (scene.root / "snapshots" / scene.first.id).write_bytes(b"not a snapshot")
    report = _check(scene)
    assert [(p.code, p.subject) for p in report.errors] == [
        ("snapshot-damaged", f"snapshots/{scene.first.id}")
    ]
    assert report.snapshots == 2


def test_damaged_key_file_is_named(scene: Scene) -> None:
    repo = _reopen(scene)
    extra_key = repo.add_key(b"another password", kdf=FAST_KDF)
    with (scene.root / extra_key).open("ab") as f:
        f.write(b" ")
    report = run_check(repo)
    assert [(p.code, p.subject) for p in report.errors] == [("key-damaged", extra_key)]


def test_stale_lock_is_noted_and_removed(scene: Scene) -> None:
    repo = _reopen(scene)
    old = repo.clock.now() - timedelta(hours=2)
    info = LockInfo("locks/" + "ab" * 16, old, old, "elsewhere", 4242, False, "backup")
    repo.storage.put(info.name, seal_object(repo.aead, T_LOCK, json.dumps(info.to_json()).encode()))
    report = run_check(repo)
    assert report.ok
    [note] = report.notes
    assert (note.code, note.subject) == ("lock-stale", info.name)
    assert "PID 4242" in note.message
    assert not any(True for _ in repo.storage.list("locks/"))


def test_check_takes_a_shared_lock(scene: Scene) -> None:
    repo = _reopen(scene)
    with repo.lock("backup"):
        assert run_check(repo).ok  # shared with a running backup
    with repo.lock("repair", exclusive=True), pytest.raises(RepositoryLocked):
        run_check(_reopen(scene))


def test_repair_takes_an_exclusive_lock(scene: Scene) -> None:
    repo = _reopen(scene)
    with repo.lock("backup"), pytest.raises(RepositoryLocked):
        run_repair_index(_reopen(scene))


def test_check_leaves_the_repository_unchanged(scene: Scene) -> None:
    before = sorted((p, f.read_bytes()) for p, f in _all_files(scene.root))
    check_repository(_reopen(scene), READ_ALL)
    assert sorted((p, f.read_bytes()) for p, f in _all_files(scene.root)) == before


def _all_files(root: Path) -> list[tuple[str, Path]]:
    return [(str(p.relative_to(root)), p) for p in root.rglob("*") if p.is_file()]


# --- read-data subsets ------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2, 3, 7])
def test_groups_read_every_pack_exactly_once(scene: Scene, groups: int) -> None:
    packs = set(scene.repo.list_packs())
    read: list[bytes] = []
    for n in range(1, groups + 1):
        report = _check(scene, CheckOptions(subset=Subset(group=n, groups=groups)))
        assert report.ok and report.read_data == f"{n}/{groups}"
        assert all(p[0] % groups == n - 1 for p in report.read_pack_ids)
        read += report.read_pack_ids
    assert sorted(read) == sorted(packs)  # the union is everything, and no pack twice


def test_percentage_reads_that_share_at_random(scene: Scene) -> None:
    packs = scene.repo.list_packs()
    half = math.ceil(len(packs) / 2)
    seen: set[bytes] = set()
    for _ in range(6):
        report = _check(scene, CheckOptions(subset=parse_subset("50%")))
        assert report.packs_read == len(set(report.read_pack_ids)) == half
        assert report.bytes_read == sum(packs[p] for p in report.read_pack_ids)
        seen.update(report.read_pack_ids)
    assert len(seen) > half  # not the same half every time
    assert _check(scene, CheckOptions(subset=parse_subset("100%"))).packs_read == len(packs)


def test_a_subset_still_finds_damage_in_its_group(scene: Scene) -> None:
    _blob_id, loc = _blob_location(scene.repo, scene.first, scene.big)
    _flip(_pack_file(scene, loc.pack_id), loc.offset + 1)
    n = loc.pack_id[0] % 2 + 1
    hit = _check(scene, CheckOptions(subset=Subset(group=n, groups=2)))
    miss = _check(scene, CheckOptions(subset=Subset(group=3 - n, groups=2)))
    assert loc.pack_id.hex() in {p.pack for p in hit.errors}
    assert miss.ok


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1/7", Subset(group=1, groups=7)),
        (" 7/7 ", Subset(group=7, groups=7)),
        ("1/1", Subset(group=1, groups=1)),
        ("10%", Subset(percent=10.0)),
        ("2.5%", Subset(percent=2.5)),
        ("100%", Subset(percent=100.0)),
    ],
)
def test_parse_subset(spec: str, expected: Subset) -> None:
    assert parse_subset(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "0/2", "3/2", "1/0", "1/257", "0%", "101%", "abc", "1/2/3", "-1/2", "50", "%"]
)
def test_parse_subset_rejects_nonsense(spec: str) -> None:
    with pytest.raises(UsageError, match="--read-data-subset") as err:
        parse_subset(spec)
    assert err.value.hint and "n/t" in err.value.hint


def test_subset_describe_round_trips() -> None:
    for spec in ("3/7", "12.5%", "50%"):
        assert parse_subset(spec).describe() == spec


# --- odd trees --------------------------------------------------------------------------------


def test_tree_naming_an_invalid_blob_id(scene: Scene) -> None:
    repo = _reopen(scene)
    repo.load_index()
    saver = BlobSaver(repo, bytes.fromhex(scene.second.chain))
    node = t.Node(name="odd", type=t.FILE, content=["zz"])
    root, _new = saver.save(BLOB_TREE, t.encode_tree([node]))
    saver.finish()
    snap = replace(scene.second, tree=root.hex(), id="")
    repo.save_snapshot(snap)
    report = _check(scene)
    assert [(p.code, p.snapshot, p.path) for p in report.errors] == [
        ("tree-damaged", snap.id, "/odd")
    ]


@pytest.mark.parametrize(
    "node",
    [
        {"name": "a", "type": "file", "content": ["00" * 32], "mode": 1},
        {"name": "a", "type": "dir", "subtree": "11" * 32},
        {"name": "a", "type": "file", "content": "abc"},  # taken, then named invalid ids
        {"name": "a", "type": "file", "xattrs": {"user.x": "eA=="}},
        {"name": "a"},  # no type
        {"name": "a", "type": "file", "content": 3},
        {"name": "a", "type": "file", "content": None},
        {"name": "a", "type": "file", "xattrs": {"user.x": "not base64!"}},
        {"name": "a", "type": "file", "xattrs": []},
    ],
)
def test_the_walk_refuses_the_trees_decode_tree_refuses(node: dict[str, object]) -> None:
    """check's walk reads trees as JSON (check/walk.py, _entries): it must refuse exactly
    the trees every other reader refuses, and see the same of the others."""
    from safehold.errors import FormatError
    from safehold.repository.check.walk import _entries

    raw = orjson.dumps({"nodes": [node]})
    try:
        nodes = t.decode_tree(raw)
    except FormatError:
        with pytest.raises(FormatError, match="is not a valid tree"):
            _entries(raw, "tree")
        return
    assert [(n.name, n.type, n.content, n.subtree) for n in nodes] == [
        (name, kind, list(content), subtree)
        for name, kind, content, subtree in _entries(raw, "tree")
    ]


@pytest.mark.parametrize("cap", [1 << 16, 3])
def test_the_tree_cache_is_bounded_by_nodes_and_the_report_is_the_same(
    mem_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: int
) -> None:
    """Two chains of the same folders: each tree is walked once per chain, loaded once
    while the cache holds it, and the cache never holds more than its share of nodes."""
    from safehold.repository.check import walk as check_walk

    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(5):
            (src / f"d{d}" / f"f{f}").write_text(f"{d}/{f}")
    for _ in range(2):
        run_backup(mem_repo, BackupOptions(paths=[str(src)], isolated=True))
    monkeypatch.setattr(check_walk, "TREE_CACHE_NODES", cap)
    loaded: list[bytes] = []
    sizes: list[int] = []
    real = check_walk._entries

    def counting(data: bytes, what: str) -> list[check_walk.Entry]:
        loaded.append(data)
        return real(data, what)

    real_load = check_walk.SnapshotChecks.load_tree

    def load_tree(self: check_walk.SnapshotChecks, tree_id: bytes) -> list[check_walk.Entry]:
        out = real_load(self, tree_id)
        sizes.append(self.cached_nodes)
        assert self.cached_nodes == sum(map(len, self.trees.values()))
        return out

    monkeypatch.setattr(check_walk, "_entries", counting)
    monkeypatch.setattr(check_walk.SnapshotChecks, "load_tree", load_tree)
    report = check_repository(mem_repo)
    assert report.ok and report.snapshots == 2
    assert max(sizes) <= cap
    trees = report.trees  # distinct trees
    # Walked once per chain: loaded once each with room, again for the second chain without.
    assert len(loaded) == (trees if cap > 100 else 2 * trees)


def test_one_chain_caches_no_tree_and_counts_each_blob_once(
    mem_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one chain no tree is walked twice, so none is kept; data blobs shared by files
    and snapshots are counted once."""
    from safehold.repository.check import walk as check_walk

    src = tmp_path / "src"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(4):
            (src / f"d{d}" / f"f{f}").write_text(f"content {f}")  # shared across folders
    run_backup(mem_repo, BackupOptions(paths=[str(src)]))
    (src / "d0" / "new").write_text("only in the second")
    run_backup(mem_repo, BackupOptions(paths=[str(src)]))
    held: list[int] = []
    real_load = check_walk.SnapshotChecks.load_tree

    def load_tree(self: check_walk.SnapshotChecks, tree_id: bytes) -> list[check_walk.Entry]:
        out = real_load(self, tree_id)
        held.append(len(self.trees))
        return out

    monkeypatch.setattr(check_walk.SnapshotChecks, "load_tree", load_tree)
    report = check_repository(mem_repo)
    assert report.ok and report.snapshots == 2
    assert held and max(held) == 0
    assert report.blobs == 5  # four contents, and the new file's
