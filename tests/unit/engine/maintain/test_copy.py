"""The copy engine against real in-memory repositories (and the shipped fault injector)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from safehold.crypto.keys import KdfParams
from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.maintain.copy import COPIED, FAILED, SKIPPED, copy_snapshots
from safehold.engine.progress import Progress
from safehold.engine.tree_walk import walk
from safehold.errors import ObjectNotFound
from safehold.repository.chains import new_chain_id
from safehold.repository.format import BLOB_DATA, BLOB_TREE
from safehold.repository.repository import Repository
from safehold.repository.saver import BlobSaver
from safehold.repository.snapshot import Snapshot
from safehold.repository.tree import encode_tree_json
from safehold.storage.base import Storage
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import FaultyStorage

KDF = KdfParams(n=1 << 10)


def make_repo(storage: Storage | None = None, password: bytes = b"pw", **kw: Any) -> Repository:
    return Repository.init(storage or MemoryStorage(), password, kdf=KDF, **kw)


def backup(repo: Repository, path: Path, **kw: Any) -> Snapshot:
    return run_backup(repo, BackupOptions(paths=[str(path)], threads=2, **kw)).snapshot


def contents(repo: Repository, snap: Snapshot) -> dict[str, tuple[dict[str, Any], bytes]]:
    """Every node's metadata (ids left out: they differ between repositories) and data."""
    if not repo.index_loaded:
        repo.load_index()
    out = {}
    for path, node in walk(repo, snap.tree):
        meta = node.to_json()
        meta.pop("content", None)
        meta.pop("subtree", None)
        data = b"".join(repo.load_blob(bytes.fromhex(c)) for c in node.content)
        out[path] = (meta, data)
    return out


def stored(repo: Repository) -> dict[str, int]:
    """Every object but locks, with its size."""
    return {o.name: o.size for o in repo.storage.list("") if not o.name.startswith("locks/")}


@pytest.fixture
def tree(sample_tree: Path) -> Path:
    return sample_tree


def test_copy_reproduces_every_snapshot_under_the_destination_key(tree: Path) -> None:
    src, dst = make_repo(), make_repo(password=b"other")
    first = backup(src, tree)
    (tree / "sub" / "deeper" / "notes.md").write_text("changed\n" * 500)
    (tree / "new.bin").write_bytes(os.urandom(200_000))
    second = backup(src, tree, tags=["nightly"])

    results = copy_snapshots(src, dst, [second, first])

    assert [(r.source.id, r.status) for r in results] == [(first.id, COPIED), (second.id, COPIED)]
    copies = {s.original: s for s in dst.list_snapshots()}
    assert set(copies) == {first.id, second.id}
    for orig in (first, second):
        copy = copies[orig.id]
        assert contents(dst, copy) == contents(src, orig)
        assert copy.tree != orig.tree
        for field in ("time", "paths", "hostname", "username", "tags", "chain", "chain_seq"):
            assert getattr(copy, field) == getattr(orig, field), field
        assert (copy.isolated, copy.summary, copy.errors) == (
            orig.isolated,
            orig.summary,
            orig.errors,
        )
    # The parent link points at the destination's copy of the parent.
    assert copies[second.id].parent == copies[first.id].id
    # Re-encrypted under another key: no blob id and no pack is shared.
    assert not set(src.index.blob_ids()) & set(dst.index.blob_ids())
    assert not set(src.index.packs) & set(dst.index.packs)


def test_second_copy_skips_everything_and_writes_nothing(tree: Path) -> None:
    src, dst = make_repo(), make_repo()
    backup(src, tree)
    (tree / "hello.txt").write_text("again\n")
    backup(src, tree)
    first = copy_snapshots(src, dst, src.list_snapshots())
    before = stored(dst)

    again = copy_snapshots(src, dst, src.list_snapshots())

    assert [r.status for r in again] == [SKIPPED, SKIPPED]
    assert [r.target for r in again] == [r.target for r in first]
    assert stored(dst) == before


def test_deduplication_inside_chains_survives_the_copy(tree: Path) -> None:
    src, dst = make_repo(), make_repo()
    full = backup(src, tree)
    (tree / "hello.txt").write_text("a small change\n")
    incremental = backup(src, tree)
    isolated = backup(src, tree, isolated=True)
    assert incremental.chain == full.chain != isolated.chain

    results = copy_snapshots(src, dst, [full, incremental, isolated])

    by_id = {r.source.id: r for r in results}
    # Same content and same chains: the destination stores exactly what the source did,
    # little for the incremental and everything again for the isolated snapshot.
    for snap in (full, incremental, isolated):
        assert by_id[snap.id].blobs_new == snap.summary["blobs_new"], snap.id
        assert by_id[snap.id].data_added == snap.summary["data_added"], snap.id
    assert by_id[full.id].data_added > 3 * 1024 * 1024
    assert by_id[incremental.id].data_added < 64 * 1024
    assert by_id[isolated.id].data_added > 3 * 1024 * 1024
    by_chain: dict[bytes, int] = {}
    for rec in dst.index.packs.values():
        by_chain[rec.chain_id] = by_chain.get(rec.chain_id, 0) + len(rec.entries)
    assert set(by_chain) == {bytes.fromhex(full.chain), bytes.fromhex(isolated.chain)}


def test_a_copy_of_a_copy_keeps_the_first_original(tree: Path) -> None:
    a, b, c = make_repo(), make_repo(), make_repo()
    snap = backup(a, tree)
    copy_snapshots(a, b, a.list_snapshots())
    [via_b] = copy_snapshots(b, c, b.list_snapshots())
    assert via_b.status == COPIED
    assert c.load_snapshot(via_b.target).original == snap.id

    [direct] = copy_snapshots(a, c, a.list_snapshots())

    assert (direct.status, direct.target) == (SKIPPED, via_b.target)
    assert len(c.list_snapshot_ids()) == 1


class _InterruptAfter(Progress):
    """Stops the copy (as Ctrl-C would) once ``limit`` bytes of files were copied."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done = 0

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        self.done += nbytes
        if self.done >= self.limit:
            raise KeyboardInterrupt


def test_an_interrupted_copy_leaves_no_snapshot_and_resumes_with_uploaded_data(
    tree: Path,
) -> None:
    src = make_repo()
    dst_storage = MemoryStorage()
    dst = make_repo(dst_storage, pack_size=256 * 1024)
    snap = backup(src, tree)

    with pytest.raises(KeyboardInterrupt):
        copy_snapshots(src, dst, [snap], _InterruptAfter(3 * 1024 * 1024))

    assert dst.list_snapshot_ids() == []
    assert any(name.startswith("data/") for name in stored(dst))
    assert not list(dst_storage.list("locks/"))
    reopened = Repository.open(dst_storage, b"pw")
    [result] = copy_snapshots(src, reopened, [snap])
    assert result.status == COPIED
    # The big file's data was uploaded before the interruption and is not sent again.
    assert result.data_added < 1024 * 1024
    assert contents(reopened, reopened.load_snapshot(result.target)) == contents(src, snap)


def test_damaged_source_data_fails_only_the_snapshot_that_needs_it(
    tree: Path, tmp_path: Path
) -> None:
    faulty = FaultyStorage(MemoryStorage())
    src, dst = make_repo(faulty), make_repo()
    good = backup(src, tree)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.bin").write_bytes(os.urandom(100_000))
    damaged = backup(src, other, isolated=True)
    src.load_index()
    chain = bytes.fromhex(damaged.chain)
    bad_packs = {p.hex() for p, rec in src.index.packs.items() if rec.chain_id == chain}
    faulty.corrupt_get(lambda name: name.rsplit("/", 1)[-1] in bad_packs)

    results = {r.source.id: r for r in copy_snapshots(src, dst, [good, damaged])}

    assert results[good.id].status == COPIED
    assert results[damaged.id].status == FAILED
    assert "failed authentication" in results[damaged.id].problems[0]
    assert [s.original for s in dst.list_snapshots()] == [good.id]


def test_a_copy_that_fails_verification_is_removed_and_copied_by_the_next_run(
    tree: Path,
) -> None:
    src = make_repo()
    faulty = FaultyStorage(MemoryStorage())
    dst = make_repo(faulty)
    snap = backup(src, tree)
    # Everything stored in the destination's packs reads back damaged.
    faulty.corrupt_get("data/")

    [result] = copy_snapshots(src, dst, [snap])

    assert result.status == FAILED
    assert result.target == ""
    assert any("does not load" in p for p in result.problems), result.problems
    assert dst.list_snapshot_ids() == []

    faulty.clear()
    [retry] = copy_snapshots(src, dst, [snap])
    assert retry.status == COPIED
    assert retry.blobs_new == 0  # the first attempt's packs are reused
    assert contents(dst, dst.load_snapshot(retry.target)) == contents(src, snap)


def test_a_finished_chain_is_finished_in_the_destination(tree: Path) -> None:
    src, dst = make_repo(), make_repo()
    snap = backup(src, tree)
    open_chain = backup(src, tree, isolated=True)
    src.finish_chain(snap.chain)

    copy_snapshots(src, dst, [snap, open_chain])

    assert dst.finished_chains() == {snap.chain}


def test_only_the_given_snapshots_are_copied(tree: Path) -> None:
    src, dst = make_repo(), make_repo()
    first = backup(src, tree)
    (tree / "hello.txt").write_text("later\n")
    backup(src, tree)

    results = copy_snapshots(src, dst, [first])

    assert [r.source.id for r in results] == [first.id]
    assert [s.original for s in dst.list_snapshots()] == [first.id]
    with pytest.raises(ObjectNotFound):
        dst.storage.stat("snapshots/" + first.id)  # a new id: the copy is its own object


def test_fields_this_version_does_not_know_survive_the_copy() -> None:
    src, dst = make_repo(), make_repo()
    src.load_index()
    chain = new_chain_id()
    saver = BlobSaver(src, bytes.fromhex(chain))
    blob, _ = saver.save(BLOB_DATA, b"some data")
    node = {"name": "f", "type": "file", "mode": 0o600, "size": 9, "content": [blob.hex()]}
    node["added_by_a_later_version"] = {"x": [1, 2]}
    tree, _ = saver.save(BLOB_TREE, encode_tree_json([node]))
    saver.finish()
    snap = Snapshot(time=src.clock.now(), tree=tree.hex(), paths=["/f"], hostname="h", chain=chain)
    src.save_snapshot(snap)

    [result] = copy_snapshots(src, dst, [snap])

    assert result.status == COPIED
    [copied] = dst.load_tree_json(dst.load_snapshot(result.target).tree)
    assert copied["added_by_a_later_version"] == {"x": [1, 2]}
    assert copied["content"] != node["content"]
    assert dst.load_blob(bytes.fromhex(copied["content"][0])) == b"some data"
