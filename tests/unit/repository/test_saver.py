"""The blob saver: packs assembled by many threads at once, in a bounded set of buffers."""

from __future__ import annotations

import gc
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from safehold.crypto.aead import Aead
from safehold.errors import StorageFull
from safehold.model import ObjectInfo
from safehold.repository import saver as saver_module
from safehold.repository.format import BLOB_DATA, BLOB_TREE, T_INDEX, storage_id
from safehold.repository.index import decode_index
from safehold.repository.pack import PackEntry, pack_length, parse_header, parse_trailer
from safehold.repository.repository import Repository
from safehold.repository.saver import BlobSaver
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import FaultyStorage
from tests.conftest import FAST_KDF, PASSWORD

PACK_SIZE = 64 * 1024


def _repo(storage: MemoryStorage | FaultyStorage | None = None) -> Repository:
    repo = Repository.init(storage or MemoryStorage(), PASSWORD, kdf=FAST_KDF, pack_size=PACK_SIZE)
    repo.load_index()
    return repo


def _packs(repo: Repository) -> list[ObjectInfo]:
    return list(repo.storage.list("data/"))


def _check_pack(repo: Repository, name: str) -> list[int]:
    """Every blob the pack's own header lists opens; returns their offsets."""
    raw = repo.storage.get(name)
    assert storage_id(raw) == name.rsplit("/", 1)[1]
    hlen = parse_trailer(raw[-8:], len(raw), name)
    _, entries = parse_header(repo.aead, raw[-8 - hlen : -8], name)
    end = 4
    for e in entries:
        assert e.offset == end  # blobs back to back, in header order
        repo.open_blob(e.blob_id, raw[e.offset : e.offset + e.length], e.raw_length, name)
        end += e.length
    assert len(raw) == pack_length(end - 4, len(entries))
    return [e.offset for e in entries]


def test_blobs_saved_from_many_threads_are_packed_and_readable() -> None:
    repo = _repo()
    saver = BlobSaver(repo, b"c" * 16)
    blobs = [os.urandom(n) for n in range(1000, 9000, 37)] + [b"abc" * 3000] * 5
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: saver.save(BLOB_DATA, b), blobs))
    tree_id, new = saver.save(BLOB_TREE, b'{"nodes": []}')
    assert new
    saver.finish()
    assert sum(new for _, new in results) == len(blobs) - 4  # duplicates stored once
    for (bid, _), data in zip(results, blobs, strict=True):
        assert repo.load_blob(bid) == data
    assert repo.load_blob(tree_id) == b'{"nodes": []}'
    packs = _packs(repo)
    assert len(packs) == saver.stats.packs > 3
    for info in packs:
        assert info.size <= PACK_SIZE
        _check_pack(repo, info.name)


def test_pack_buffers_are_bounded_and_recycled(monkeypatch: pytest.MonkeyPatch) -> None:
    allocated: list[bytearray] = []
    real = saver_module._Buffers.take

    def take(self: saver_module._Buffers, *, wait: bool) -> bytearray | None:
        buf = real(self, wait=wait)
        if buf is not None and all(buf is not b for b in allocated):
            allocated.append(buf)
        return buf

    monkeypatch.setattr(saver_module._Buffers, "take", take)
    repo = _repo()
    saver = BlobSaver(repo, b"c" * 16, max_pending_packs=1)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: saver.save(BLOB_DATA, os.urandom(5000)), range(400)))
    saver.finish()
    assert saver.stats.packs > 10
    assert len(allocated) == 2  # one filling, one uploading: never more
    assert all(len(b) == PACK_SIZE for b in allocated)


def test_a_blob_larger_than_a_pack_gets_a_pack_of_its_own() -> None:
    repo = _repo()
    saver = BlobSaver(repo, b"c" * 16)
    small = saver.save(BLOB_DATA, os.urandom(1000))[0]
    big_data = os.urandom(3 * PACK_SIZE)
    big = saver.save(BLOB_DATA, big_data)[0]
    after = saver.save(BLOB_DATA, os.urandom(1000))[0]
    saver.finish()
    assert repo.load_blob(big) == big_data
    locations = [repo.index.lookup(b) for b in (small, big, after)]
    assert all(loc is not None for loc in locations)
    packs = {loc.pack_id for loc in locations if loc is not None}
    assert len(packs) == 3
    for info in _packs(repo):
        assert len(_check_pack(repo, info.name)) == 1


def test_tree_packs_grow_when_no_blob_is_being_written() -> None:
    repo = _repo()
    saver = BlobSaver(repo, b"c" * 16)
    ids = [saver.save(BLOB_TREE, os.urandom(20_000))[0] for _ in range(8)]
    saver.finish()
    for bid in ids:
        assert len(repo.load_blob(bid)) == 20_000


def test_nothing_is_indexed_before_its_pack_is_stored() -> None:
    storage = FaultyStorage(MemoryStorage())
    repo = _repo(storage)
    storage.fail_always("put", StorageFull("disk full"), match="data/")
    saver = BlobSaver(repo, b"c" * 16)
    ids = []
    with pytest.raises(StorageFull):
        for _ in range(100):
            ids.append(saver.save(BLOB_DATA, os.urandom(5000))[0])
        saver.finish()
    saver.abort()
    assert ids and not any(bid in repo.index for bid in ids)
    assert not saver.records


def test_a_blob_that_fails_to_seal_keeps_its_pack_out_of_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = _repo()
    saver = BlobSaver(repo, b"c" * 16)
    kept = saver.save(BLOB_DATA, os.urandom(1000))[0]
    real = Aead.seal_into
    failed: list[bool] = []

    def failing(self: Aead, plaintext: bytes | memoryview, aad: bytes, out: memoryview) -> None:
        if not failed:
            failed.append(True)
            raise MemoryError("no memory")
        real(self, plaintext, aad, out)

    monkeypatch.setattr(Aead, "seal_into", failing)
    with pytest.raises(MemoryError):
        saver.save(BLOB_DATA, os.urandom(1000))
    with pytest.raises(MemoryError):  # the saver stays failed
        saver.save(BLOB_DATA, os.urandom(1000))
    with pytest.raises(MemoryError):
        saver.finish()
    saver.abort()
    # The pack that held the half-written blob was dropped, with the blob before it.
    assert not _packs(repo) and kept not in repo.index


def test_a_tree_pack_being_written_into_is_closed_rather_than_grown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF, pack_size=4 << 20)
    repo.load_index()
    saver = BlobSaver(repo, b"c" * 16)
    real = Aead.seal_into
    sealing, go_on = threading.Event(), threading.Event()

    def slow(self: Aead, plaintext: bytes | memoryview, aad: bytes, out: memoryview) -> None:
        if threading.current_thread().name == "first":
            sealing.set()
            assert go_on.wait(10)
        real(self, plaintext, aad, out)

    monkeypatch.setattr(Aead, "seal_into", slow)
    first_data, second_data = os.urandom(600_000), os.urandom(600_000)
    result: list[bytes] = []
    first = threading.Thread(
        target=lambda: result.append(saver.save(BLOB_TREE, first_data)[0]), name="first"
    )
    first.start()
    assert sealing.wait(10)
    # The open tree pack's 1 MiB buffer cannot take this blob too, and cannot grow while
    # the first blob is being sealed into it: the second blob goes to a new pack.
    try:
        second = saver.save(BLOB_TREE, second_data)[0]
    finally:
        go_on.set()
        first.join()
    saver.finish()
    assert repo.load_blob(result[0]) == first_data
    assert repo.load_blob(second) == second_data
    assert len(_packs(repo)) == 2


def test_close_packs_stores_the_open_pack_and_lets_its_buffers_go() -> None:
    repo = _repo()
    saver = BlobSaver(repo, b"c" * 16)
    first = [saver.save(BLOB_DATA, os.urandom(5000))[0] for _ in range(30)]
    tree = saver.save(BLOB_TREE, b'{"nodes": []}')[0]
    saver.close_packs(BLOB_DATA)
    for future in list(saver._futures):
        future.result()
    assert not saver._buffers._free  # nothing held for data that is not coming
    assert all(bid in repo.index for bid in first)
    assert tree not in repo.index  # the tree pack stays open
    later = saver.save(BLOB_DATA, os.urandom(5000))[0]  # a new pack, a new buffer
    saver.finish()
    assert repo.load_blob(later) and saver._buffers._free == []


def test_stored_packs_keep_no_pack_entry_alive() -> None:
    """A first backup of 200,000 small files kept a PackEntry and its three integers per
    blob to its end (the pack records, for the index file and in the index's overlay):
    about 160 bytes a blob. Once a pack is stored only its index section and the overlay's
    packed entry are left."""
    repo = _repo()
    saver = BlobSaver(repo, b"c" * 16)
    ids = {saver.save(BLOB_DATA, os.urandom(3000))[0] for _ in range(100)}
    saver.finish()
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is PackEntry and o.blob_id in ids]
    assert alive == []
    assert all(repo.index.lookup(blob_id) is not None for blob_id in ids)
    # ...and the index file written from the sections lists every blob.
    [name] = repo.list_index_files()
    records = decode_index(repo.load_object(name, T_INDEX), name)
    listed = {e.blob_id for rec in records for e in rec.entries}
    assert listed == ids


def test_a_blob_sealed_elsewhere_is_stored_once_and_opens() -> None:
    from safehold.crypto.aead import OVERHEAD
    from safehold.repository.compress import compress

    repo = _repo()
    saver = BlobSaver(repo, bytes(16))  # type: ignore[arg-type]
    data = b"sealed by a forked reader " * 50
    bid = repo.master.blob_id(data)
    comp_id, payload = compress(data, 3)
    sealed = bytearray(OVERHEAD + len(payload))
    repo.aead.seal_into(payload, bid + bytes((comp_id,)), memoryview(sealed))
    assert saver.save_sealed(BLOB_DATA, bid, comp_id, memoryview(sealed), len(data))
    assert not saver.save_sealed(BLOB_DATA, bid, comp_id, memoryview(sealed), len(data))
    assert saver.save(BLOB_DATA, data) == (bid, False)  # the same id: already there
    saver.finish()
    assert (saver.stats.blobs_new, saver.stats.blobs_seen) == (1, 3)
    repo.load_index()
    assert repo.load_blob(bid) == data
    for info in _packs(repo):
        _check_pack(repo, info.name)


def _sealed_elsewhere(repo: Repository, data: bytes) -> tuple[bytes, int, memoryview, int]:
    from safehold.crypto.aead import OVERHEAD
    from safehold.repository.compress import compress

    bid = repo.master.blob_id(data)
    comp_id, payload = compress(data, 3)
    sealed = bytearray(OVERHEAD + len(payload))
    repo.aead.seal_into(payload, bid + bytes((comp_id,)), memoryview(sealed))
    return bid, comp_id, memoryview(sealed), len(data)


def test_blobs_sealed_elsewhere_are_stored_in_batches_as_one_by_one() -> None:
    """A batch fills the open pack, goes on in the next when it is full, stores a repeated
    id once and skips what another writer already stored: as save_sealed would."""
    repo = _repo()
    saver = BlobSaver(repo, bytes(16))  # type: ignore[arg-type]
    datas = [os.urandom(3000 + 17 * i) for i in range(60)]  # ~190 KiB: several packs
    blobs = [_sealed_elsewhere(repo, d) for d in datas]
    assert saver.save(BLOB_DATA, datas[5]) == (blobs[5][0], True)  # stored before the batch
    batch = [*blobs[:30], blobs[3], *blobs[30:]]  # blob 3 twice in it
    stored = saver.save_sealed_many(BLOB_DATA, batch)  # type: ignore[arg-type]
    assert stored == [i != 5 for i in range(30)] + [False] + [True] * 30
    assert saver.save_sealed_many(BLOB_DATA, blobs[:2]) == [False, False]  # type: ignore[arg-type]
    saver.finish()
    assert saver.stats.blobs_new == 60 and saver.stats.blobs_seen == 1 + 61 + 2
    assert saver.stats.bytes_new_raw == sum(map(len, datas))
    repo.load_index()
    for (bid, *_rest), data in zip(blobs, datas, strict=True):
        assert repo.load_blob(bid) == data
    packs = _packs(repo)
    assert len(packs) >= 3
    listed = []
    for info in packs:
        assert info.size <= PACK_SIZE
        listed += _check_pack(repo, info.name)
    assert len(listed) == 60  # each blob in exactly one pack
