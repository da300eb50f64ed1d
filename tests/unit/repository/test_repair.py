"""``repair index`` on repositories the real backup engine wrote, damaged the way disks,
people and interrupted processes damage them. The rule every test holds repair to: a blob
that could be read before repair can be read after it (and after a crash in the middle of
it), and what repair cannot save it names."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.verify import run_repair_index
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.errors import IntegrityError, ObjectNotFound
from safehold.repository.check import CheckOptions, CheckReport, check_repository
from safehold.repository.chunker import ChunkerParams
from safehold.repository.format import BLOB_DATA, T_INDEX
from safehold.repository.index import PackRecord, decode_index
from safehold.repository.pack import TRAILER_LEN
from safehold.repository.repair import (
    BLOBS_DAMAGED,
    HEADER_DAMAGED,
    MISSING,
    UNREADABLE,
    RepairOptions,
    repair_index,
)
from safehold.repository.repository import Repository, pack_name
from safehold.repository.saver import BlobSaver
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import write_trash
from safehold.storage.local import LocalStorage
from safehold.storage.wrappers import FaultyStorage
from tests.conftest import FAST_KDF, PASSWORD

# Small chunks in small packs: a pack holds several blobs, a repository many packs.
CHUNKER = ChunkerParams(min_size=16 * 1024, avg_size=32 * 1024, max_size=64 * 1024, seed=7)
PACK_SIZE = 256 * 1024
READ_ALL = RepairOptions(read_all_packs=True)
SMALL_BATCH = RepairOptions(batch=2)  # several new index files: more points to crash at


@dataclass
class Scene:
    root: Path  # the repository's folder
    src: Path  # backed up twice, one chain
    other: Path  # backed up once, --isolated
    snaps: list[Snapshot]
    expected: dict[str, dict[str, bytes]]  # snapshot id -> files as backed up

    def open(self) -> Repository:
        """A fresh process's view (index not loaded)."""
        return Repository.open(LocalStorage(self.root), PASSWORD)

    def loaded(self) -> Repository:
        repo = self.open()
        repo.load_index(strict=False)
        return repo


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _write_tree(root: Path, seed: int) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(600 * 1024 + seed))
    (root / "sub" / "notes.txt").write_text(f"notes {seed}\n" * 3000)
    for i in range(6):
        (root / "sub" / f"small{i}.bin").write_bytes(os.urandom(9000 + i))
    return root


def _backup(repo: Repository, path: Path, **kw: object) -> Snapshot:
    opts = BackupOptions(paths=[str(path)], threads=2, **kw)  # type: ignore[arg-type]
    return run_backup(repo, opts).snapshot


def make_scene(tmp_path: Path) -> Scene:
    root = tmp_path / "repo"
    repo = Repository.init(
        LocalStorage(root, create=True),
        PASSWORD,
        kdf=FAST_KDF,
        pack_size=PACK_SIZE,
        chunker=CHUNKER,
    )
    src = _write_tree(tmp_path / "src", 1)
    other = _write_tree(tmp_path / "other", 2)
    expected = {}
    first = _backup(repo, src)
    expected[first.id] = _files(src)
    (src / "sub" / "notes.txt").write_text("changed\n" * 4000)
    second = _backup(repo, src)
    expected[second.id] = _files(src)
    isolated = _backup(repo, other, isolated=True)
    expected[isolated.id] = _files(other)
    return Scene(root, src, other, [first, second, isolated], expected)


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    return make_scene(tmp_path)


# --- what the tests look at -------------------------------------------------------------------


def snapshot_blobs(repo: Repository) -> set[bytes]:
    """Every blob id the snapshots reference (trees and data), as far as trees can be read."""
    out: set[bytes] = set()
    todo = [bytes.fromhex(s.tree) for s in repo.list_snapshots()]
    while todo:
        tree_id = todo.pop()
        if tree_id in out:
            continue
        out.add(tree_id)
        try:
            nodes = repo.load_tree(tree_id.hex())
        except IntegrityError:
            continue
        for node in nodes:
            out.update(bytes.fromhex(c) for c in node.content)
            if node.subtree:
                todo.append(bytes.fromhex(node.subtree))
    return out


def readable(scene: Scene, ids: set[bytes] | None = None) -> set[bytes]:
    """The referenced blobs a fresh process can read, through the index, and verify."""
    repo = scene.loaded()
    out = set()
    for blob_id in ids if ids is not None else snapshot_blobs(repo):
        try:
            repo.load_blob(blob_id)
        except (IntegrityError, ObjectNotFound):
            continue
        out.add(blob_id)
    return out


def restores(scene: Scene, snap: Snapshot, target: Path) -> bool:
    repo = scene.loaded()
    result = run_restore(repo, snap, RestoreOptions(target=str(target), threads=2))
    if result.errors:
        return False
    src = scene.other if snap is scene.snaps[2] else scene.src
    return _files(target / str(src).lstrip("/")) == scene.expected[snap.id]


def all_restore(scene: Scene, tmp_path: Path) -> None:
    for i, snap in enumerate(scene.snaps):
        assert restores(scene, snap, tmp_path / f"restored-{i}"), snap.id


def check(scene: Scene, *, read_data: bool = False) -> CheckReport:
    return check_repository(scene.open(), CheckOptions(read_data=read_data))


def codes(report: CheckReport) -> set[str]:
    return {p.code for p in report.errors}


def listing(scene: Scene) -> dict[str, bytes]:
    return {
        str(p.relative_to(scene.root)): p.read_bytes()
        for p in scene.root.rglob("*")
        if p.is_file() and p.relative_to(scene.root).parts[0] != "locks"
    }


def index_files(scene: Scene) -> dict[str, list[PackRecord]]:
    repo = scene.open()
    return {
        name: decode_index(repo.load_object(name, T_INDEX), name)
        for name in repo.list_index_files()
    }


def data_packs(scene: Scene) -> list[PackRecord]:
    """Indexed packs of data blobs of the chain of ``src`` (not the isolated snapshot's),
    those with the most blobs first."""
    repo = scene.loaded()
    chain = bytes.fromhex(scene.snaps[0].chain)
    recs = [
        r
        for r in repo.index.packs.values()
        if r.entries[0].blob_type == BLOB_DATA and r.chain_id == chain
    ]
    return sorted(recs, key=lambda r: (-len(r.entries), r.pack_id))


def header_length(path: Path) -> int:
    raw = path.read_bytes()
    return int.from_bytes(raw[-TRAILER_LEN:-4], "little") + TRAILER_LEN


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def flip_header(scene: Scene, pack_id: bytes) -> Path:
    """Damages the sealed header of a pack (its blobs stay intact)."""
    path = scene.root / pack_name(pack_id)
    flip(path, path.stat().st_size - header_length(path) + 10)
    return path


def file_listing(scene: Scene, pack_id: bytes) -> str:
    [name] = [
        n for n, recs in index_files(scene).items() if any(r.pack_id == pack_id for r in recs)
    ]
    return name


# --- a healthy repository ---------------------------------------------------------------------


def test_healthy_repository_is_left_as_it_is(scene: Scene) -> None:
    before = listing(scene)
    for opts in (RepairOptions(), READ_ALL):
        report = run_repair_index(scene.open(), opts)
        assert report.ok and not report.findings and not report.written and not report.removed
        assert report.kept == sorted(index_files(scene))
        assert listing(scene) == before


# --- damaged pack headers ---------------------------------------------------------------------


def test_damaged_header_is_salvaged_into_a_new_pack(scene: Scene, tmp_path: Path) -> None:
    rec = data_packs(scene)[0]
    assert len(rec.entries) >= 3
    old_file = file_listing(scene, rec.pack_id)
    others = set(index_files(scene)) - {old_file}
    path = flip_header(scene, rec.pack_id)
    damaged = path.read_bytes()
    before = readable(scene)
    assert {e.blob_id for e in rec.entries} <= before  # the index still reaches them

    report = run_repair_index(scene.open())

    assert report.ok, report.to_json()
    [finding] = report.findings
    assert (finding.problem, finding.pack) == (HEADER_DAMAGED, pack_name(rec.pack_id))
    assert finding.salvaged == len({e.blob_id for e in rec.entries}) and not finding.lost
    assert len(report.new_packs) == 1
    # Only the index file that listed the damaged pack was rewritten.
    assert report.removed == [old_file] and set(report.kept) == others
    assert path.read_bytes() == damaged  # left in place, not deleted
    assert readable(scene) == before
    all_restore(scene, tmp_path)
    after = check(scene)
    assert after.ok, [str(p) for p in after.errors]
    assert {(p.code, p.pack) for p in after.warnings} == {
        ("pack-unindexed-damaged", rec.pack_id.hex())
    }
    # Reading every pack does not go back to the damaged one: nothing reads it any more.
    read = check(scene, read_data=True)
    assert read.ok, [str(p) for p in read.errors]
    # A second run has nothing left to do but name the damaged pack again.
    again = run_repair_index(scene.open())
    assert again.ok and not again.written and not again.removed
    assert [(f.problem, f.pack) for f in again.findings] == [(UNREADABLE, pack_name(rec.pack_id))]


def test_damaged_blob_in_a_damaged_header_pack_is_named(scene: Scene) -> None:
    rec = data_packs(scene)[0]
    bad = rec.entries[1]
    flip_header(scene, rec.pack_id)
    flip(scene.root / pack_name(rec.pack_id), bad.offset + bad.length // 2)

    report = repair_index(scene.loaded())

    assert not report.ok
    [finding] = report.findings
    assert finding.lost == [bad.blob_id.hex()] == finding.damaged
    assert finding.salvaged == len({e.blob_id for e in rec.entries}) - 1
    assert readable(scene, {e.blob_id for e in rec.entries}) == {
        e.blob_id for e in rec.entries if e != bad
    }


# --- index files ------------------------------------------------------------------------------


def test_damaged_index_file_is_rebuilt_from_headers(scene: Scene, tmp_path: Path) -> None:
    files = index_files(scene)
    name = sorted(files)[1]
    flip(scene.root / name, 40)
    assert not check(scene).ok

    report = run_repair_index(scene.open())

    assert report.ok and not report.findings
    assert [n for n, _why in report.damaged_index] == [name] and report.removed == [name]
    assert set(report.kept) == set(files) - {name}
    assert report.adopted == len(files[name])
    after = check(scene, read_data=True)
    assert after.ok and not after.problems, [str(p) for p in after.problems]
    all_restore(scene, tmp_path)


def test_junk_in_the_index_folder_is_removed(scene: Scene) -> None:
    files = set(index_files(scene))
    (scene.root / "index" / "junk").write_bytes(b"not an index file")
    report = run_repair_index(scene.open())
    assert report.ok and report.removed == ["index/junk"] and not report.written
    assert set(report.kept) == files == set(scene.open().list_index_files())


def _second_copy(scene: Scene, rec: PackRecord) -> str:
    """Another index file listing ``rec`` too, as an interrupted prune leaves them."""
    return scene.open().write_index([rec])


def test_damaged_index_and_header_salvages_from_another_copy(scene: Scene) -> None:
    files = index_files(scene)
    name = max(files, key=lambda n: len(files[n]))
    recs = [r for r in files[name] if r.entries[0].blob_type == BLOB_DATA]
    copied, lone = recs[0], recs[1]
    copy = _second_copy(scene, copied)
    flip(scene.root / name, 40)
    flip_header(scene, copied.pack_id)
    flip_header(scene, lone.pack_id)

    report = run_repair_index(scene.open())

    found = {f.pack: f for f in report.findings}
    salvaged = found[pack_name(copied.pack_id)]
    assert salvaged.problem == HEADER_DAMAGED
    assert salvaged.salvaged == len({e.blob_id for e in copied.entries}) and not salvaged.lost
    # The other pack is known only to the damaged file: nothing to salvage it from.
    assert found[pack_name(lone.pack_id)].problem == UNREADABLE
    assert not report.ok and report.unrecovered == [found[pack_name(lone.pack_id)]]
    assert copy in report.removed and name in report.removed
    assert readable(scene, {e.blob_id for e in copied.entries}) == {
        e.blob_id for e in copied.entries
    }


def test_index_cache_is_a_salvage_source(scene: Scene, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    user = scene.open()
    user.use_index_cache(cache)
    user.load_index()  # writes the cache, as every command does
    rec = data_packs(scene)[0]
    name = file_listing(scene, rec.pack_id)
    flip(scene.root / name, 40)
    flip_header(scene, rec.pack_id)

    repo = scene.open()
    repo.use_index_cache(cache)
    report = run_repair_index(repo)

    assert report.ok, report.to_json()
    finding = next(f for f in report.findings if f.pack == pack_name(rec.pack_id))
    assert finding.problem == HEADER_DAMAGED
    assert finding.salvaged == len({e.blob_id for e in rec.entries})
    assert check(scene).ok


# --- missing and unindexed packs --------------------------------------------------------------


def test_missing_pack_is_dropped_and_named(scene: Scene) -> None:
    rec = data_packs(scene)[0]
    name = file_listing(scene, rec.pack_id)
    (scene.root / pack_name(rec.pack_id)).unlink()
    before = readable(scene)

    report = run_repair_index(scene.open())

    assert not report.ok
    [finding] = report.findings
    assert (finding.problem, finding.pack) == (MISSING, pack_name(rec.pack_id))
    assert sorted(finding.lost) == sorted({e.blob_id.hex() for e in rec.entries})
    assert report.removed == [name]
    assert readable(scene) == before
    after = check(scene)
    assert codes(after) == {"blob-missing"}  # the data is gone; the index says so


def test_unindexed_pack_is_adopted(scene: Scene) -> None:
    repo = scene.loaded()
    saver = BlobSaver(repo, os.urandom(16))
    saver.save(BLOB_DATA, os.urandom(5000))
    [rec] = saver.flush()  # uploaded, never indexed: a backup killed before its index
    saver.abort()
    kept = set(index_files(scene))

    report = run_repair_index(scene.open())

    assert report.ok and report.adopted == 1 and not report.removed
    assert set(report.kept) == kept
    [new] = report.written
    assert [r.pack_id for r in index_files(scene)[new]] == [rec.pack_id]
    assert not check(scene).problems


# --- --read-all-packs -------------------------------------------------------------------------


def test_read_all_packs_drops_only_the_damaged_blob(scene: Scene, tmp_path: Path) -> None:
    rec = data_packs(scene)[0]
    bad = rec.entries[len(rec.entries) // 2]
    flip(scene.root / pack_name(rec.pack_id), bad.offset + bad.length // 2)
    before = readable(scene)
    assert bad.blob_id not in before
    untouched = listing(scene)

    fast = run_repair_index(scene.open())  # reads headers only: sees nothing
    assert fast.ok and not fast.findings and listing(scene) == untouched

    report = run_repair_index(scene.open(), READ_ALL)

    assert not report.ok
    [finding] = report.findings
    assert (finding.problem, finding.pack) == (BLOBS_DAMAGED, pack_name(rec.pack_id))
    assert finding.lost == finding.damaged == [bad.blob_id.hex()]
    assert finding.salvaged == len({e.blob_id for e in rec.entries}) - 1
    assert readable(scene) == before
    # Retired: still indexed (so no backup adopts the damaged blob again), with no blobs.
    assert scene.loaded().index.packs[rec.pack_id].entries == ()
    assert (scene.root / pack_name(rec.pack_id)).exists()
    # Only the snapshots that need the damaged blob are affected.
    after = check(scene)
    assert codes(after) == {"blob-missing"}
    assert scene.snaps[2].id not in {p.snapshot for p in after.errors}
    assert restores(scene, scene.snaps[2], tmp_path / "isolated")

    again = run_repair_index(scene.open(), READ_ALL)
    assert again.ok and not again.findings and not again.written
    # check --read-data names the retired pack as a warning, not as a mismatch to repair.
    read = check(scene, read_data=True)
    assert codes(read) == {"blob-missing"}
    assert ("pack-retired", rec.pack_id.hex()) in {(p.code, p.pack) for p in read.warnings}


# --- the trash --------------------------------------------------------------------------------


def test_trashed_packs_and_their_index_files_are_left_alone(scene: Scene) -> None:
    repo = scene.loaded()
    saver = BlobSaver(repo, os.urandom(16))
    saver.save(BLOB_DATA, os.urandom(5000))
    saver.save(BLOB_DATA, os.urandom(300_000))
    listed, bare = saver.flush()
    saver.abort()
    # A record of the new kind, whose index file lists its pack until the sweep, and one
    # of the old kind (no index file): neither pack is repair's to touch.
    for_prune = repo.write_index([listed])
    write_trash(repo, [listed.pack_id], index=[for_prune])
    write_trash(repo, [bare.pack_id])
    flip_header(scene, listed.pack_id)
    before = listing(scene)

    report = run_repair_index(scene.open())

    assert report.ok and not report.findings
    assert report.left_for_prune == [for_prune] and report.trash_skipped == 2
    assert listing(scene) == before


# --- crashes ----------------------------------------------------------------------------------


class Killed(BaseException):
    """The process dies here: nothing after this storage call happens."""


def _damage_everything(scene: Scene) -> None:
    """A repository where repair writes packs and index files and deletes index files."""
    packs = data_packs(scene)
    flip_header(scene, packs[0].pack_id)  # salvage: a new pack, a rewritten index file
    (scene.root / pack_name(packs[1].pack_id)).unlink()  # a missing pack
    files = index_files(scene)
    damaged = next(n for n, recs in files.items() if packs[0] not in recs)
    flip(scene.root / damaged, 40)  # a damaged index file: its packs adopted again


def _errors(scene: Scene) -> set[tuple[str, str, str]]:
    return {(p.code, p.snapshot, p.path) for p in check(scene).errors}


def test_a_crash_anywhere_keeps_what_was_reachable(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene")
    _damage_everything(scene)
    before = readable(scene)
    pristine = tmp_path / "pristine"
    shutil.copytree(scene.root, pristine)
    # An uninterrupted run: how many writes and deletions it makes, and what it ends with.
    counter = FaultyStorage(LocalStorage(scene.root))
    assert not repair_index(Repository.open(counter, PASSWORD), SMALL_BATCH).ok  # missing pack
    recovered = readable(scene)
    assert recovered > before  # what the damaged index file listed
    expected = _errors(scene)
    points = [("put", n) for n in range(1, counter.calls["put"] + 1)]
    points += [("delete", n) for n in range(1, counter.calls["delete"] + 1)]
    assert len(points) >= 6, points

    for op, n in points:
        where = f"killed before {op} #{n}"
        shutil.rmtree(scene.root)
        shutil.copytree(pristine, scene.root)
        faulty = FaultyStorage(LocalStorage(scene.root)).fail_call(op, n, Killed())
        with pytest.raises(Killed):
            repair_index(Repository.open(faulty, PASSWORD), SMALL_BATCH)
        assert readable(scene) >= before, where
        repair_index(scene.open())  # the next run finishes the work
        assert readable(scene) == recovered, where
        assert _errors(scene) == expected, where
