"""The local index cache: Index.to_bytes/from_bytes, and a repository loading its index
through the cache (hits, files added or replaced since, damage, another repository's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.errors import FormatError
from safehold.repository.format import T_INDEX
from safehold.repository.index import Index, PackRecord
from safehold.repository.index_cache import FILE_NAME, IndexCache
from safehold.repository.pack import PackEntry
from safehold.repository.prune import PruneOptions, prune
from safehold.repository.repository import Repository
from safehold.storage.local import LocalStorage
from tests.conftest import FAST_KDF, PASSWORD

CHAIN_A, CHAIN_B = b"A" * 16, b"B" * 16


def rec(pack: int, chain: bytes, *blobs: int) -> PackRecord:
    entries = tuple(PackEntry(1, i * 100, 100, 150, bytes([b]) * 32) for i, b in enumerate(blobs))
    return PackRecord(bytes([pack]) * 32, chain, 4096, entries)


def state(index: Index) -> tuple[object, ...]:
    """Everything a reader of the index can see."""
    packs = {pid: index.packs[pid] for pid in index.packs}
    ids = sorted(index.blob_ids())
    return (
        packs,
        ids,
        [index.lookup(b) for b in ids],
        [index.has_in_chain(b, c) for b in ids for c in (CHAIN_A, CHAIN_B)],
        index.blob_count(),
        index.packs_bytes(),
    )


def test_an_index_survives_bytes_whole() -> None:
    index = Index(merge_at=2)  # a small merge threshold: some packs in the run, some not
    index.add_pack(rec(1, CHAIN_A, 1, 2, 3))
    index.add_pack(rec(2, CHAIN_B, 3, 4))  # blob 3 in two chains
    index.add_pack(rec(3, CHAIN_A, 5))
    index.add_pack(rec(4, CHAIN_A, 6, 1))
    index.remove_pack(bytes([3]) * 32)  # a removed pack stays numbered, not present
    before = state(index)
    loaded = Index.from_bytes(index.to_bytes())
    assert state(loaded) == before
    assert loaded.packs_bytes() == 3 * 4096  # pack 3 was removed
    assert bytes([3]) * 32 not in loaded.packs and loaded.lookup(bytes([5]) * 32) is None
    # The loaded index takes new packs like any other.
    loaded.add_pack(rec(5, CHAIN_B, 7))
    assert loaded.has_in_chain(bytes([7]) * 32, CHAIN_B)
    assert state(Index.from_bytes(Index().to_bytes())) == state(Index())


def test_index_bytes_after_a_prefix_and_the_index_grows_after() -> None:
    """The index cache puts its header before the index's bytes in the one join (views of
    the index's arrays, not copies): the same bytes, and the arrays are free to grow after
    (an array still exporting a view could not)."""
    index = Index(merge_at=2)
    for pack in range(1, 6):
        index.add_pack(rec(pack, CHAIN_A if pack % 2 else CHAIN_B, pack, pack + 10))
    whole = index.to_bytes()
    assert index.to_bytes(prefix=b"head") == b"head" + whole
    index.add_pack(rec(9, CHAIN_A, 42))  # appends to the pack arrays
    index.remove_pack(bytes([2]) * 32)
    again = Index.from_bytes(index.to_bytes())
    assert state(again) == state(index) and again.lookup(bytes([42]) * 32) is not None


def test_the_cache_file_is_the_names_and_the_index_sealed(tmp_path: Path) -> None:
    """save seals the names and the index's bytes piece by piece: the file opens to exactly
    them, and loads back as the same index."""
    from safehold.crypto.aead import Aead
    from safehold.repository import index_cache

    index = Index(merge_at=2)
    for pack in range(1, 8):
        index.add_pack(rec(pack, CHAIN_A, pack, pack + 20))
    aead = Aead(b"k" * 32)
    cache = IndexCache(tmp_path, "repo-id")
    cache.save(aead, ["b" * 64, "a" * 64], index)
    raw = cache.path.read_bytes()
    head = index_cache.MAGIC + bytes((index_cache.VERSION,))
    assert raw.startswith(head)
    plain = aead.open(raw[len(head) :], head + b"repo-id")
    assert plain == index.to_bytes(prefix=index_cache._names(["a" * 64, "b" * 64]))
    loaded = cache.load(aead)
    assert loaded is not None and loaded.names == {"a" * 64, "b" * 64}
    assert state(loaded.index) == state(index)
    index.add_pack(rec(9, CHAIN_B, 99))  # the index's arrays were let go


@pytest.mark.parametrize("cut", [0, 3, 17, 100, -5, -1])
def test_damaged_index_bytes_are_refused(cut: int) -> None:
    index = Index()
    index.add_pack(rec(1, CHAIN_A, 1, 2, 3))
    raw = index.to_bytes()
    with pytest.raises(FormatError):
        Index.from_bytes(raw[:cut])


def test_index_bytes_naming_a_missing_pack_are_refused() -> None:
    index = Index()
    index.add_pack(rec(1, CHAIN_A, 1))
    raw = bytearray(index.to_bytes())
    raw[0] = 0  # says no packs; its record still names pack 0
    with pytest.raises(FormatError):
        Index.from_bytes(bytes(raw[:16]) + bytes(raw[16 + 32 + 4 + 8 + 1 :]))


# --- a repository with a cache ------------------------------------------------------------


def reopen(path: Path, cache: Path | None) -> Repository:
    repo = Repository.open(LocalStorage(path), PASSWORD)
    if cache is not None:
        repo.use_index_cache(cache)
    return repo


def index_reads(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the index files ``repo`` reads from now on."""
    seen: list[str] = []
    real = repo.load_object

    def spy(name: str, obj_type: int) -> bytes:
        if obj_type == T_INDEX:
            seen.append(name)
        return real(name, obj_type)

    monkeypatch.setattr(repo, "load_object", spy)
    return seen


def full_state(path: Path) -> tuple[object, ...]:
    repo = reopen(path, None)
    repo.load_index()
    return state(repo.index)


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    Repository.init(LocalStorage(path, create=True), PASSWORD, kdf=FAST_KDF)
    return path


def backup(repo: Repository, src: Path, content: bytes) -> None:
    src.mkdir(exist_ok=True)
    (src / f"f{len(list(src.iterdir()))}").write_bytes(content)
    repo.load_index()
    run_backup(repo, BackupOptions(paths=[str(src)], host="h"))


def test_a_backup_leaves_a_cache_the_next_command_loads_without_index_files(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    backup(reopen(repo_path, cache), tmp_path / "src", os.urandom(5000))
    backup(reopen(repo_path, cache), tmp_path / "src", os.urandom(7000))
    assert len(reopen(repo_path, None).list_index_files()) == 2
    repo = reopen(repo_path, cache)
    reads = index_reads(repo, monkeypatch)
    repo.load_index()
    assert reads == []  # both backups' index files came from the cache
    assert state(repo.index) == full_state(repo_path)
    assert (cache / "CACHEDIR.TAG").is_file()


def test_index_files_written_elsewhere_are_loaded_on_top(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    backup(reopen(repo_path, cache), tmp_path / "src", os.urandom(5000))
    backup(reopen(repo_path, None), tmp_path / "src", os.urandom(6000))  # another machine
    repo = reopen(repo_path, cache)
    reads = index_reads(repo, monkeypatch)
    repo.load_index()
    assert len(reads) == 1  # only the other machine's index file
    assert state(repo.index) == full_state(repo_path)
    # ...and the cache now covers it too.
    again = reopen(repo_path, cache)
    reads = index_reads(again, monkeypatch)
    again.load_index()
    assert reads == [] and state(again.index) == full_state(repo_path)


def test_a_replaced_index_file_makes_a_full_load(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    src = tmp_path / "src"
    backup(reopen(repo_path, cache), src, os.urandom(5000))
    backup(reopen(repo_path, cache), src, os.urandom(6000))
    # Forget the first snapshot's file and prune: index files are rewritten, a pack goes.
    (src / "f0").unlink()
    backup(reopen(repo_path, cache), src, b"")
    writer = reopen(repo_path, None)
    for snap in sorted(writer.list_snapshots(), key=lambda s: s.time)[:-1]:
        writer.delete_snapshot(snap.id)
    before = writer.list_index_files()
    prune(writer, PruneOptions(max_unused=0))
    assert not set(before) & set(writer.list_index_files())  # every file replaced
    repo = reopen(repo_path, cache)
    reads = index_reads(repo, monkeypatch)
    repo.load_index()
    assert sorted(reads) == repo.list_index_files()  # everything read again
    assert state(repo.index) == full_state(repo_path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "other-repository"])
def test_a_bad_cache_is_a_miss_never_an_error(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    cache = tmp_path / "cache"
    backup(reopen(repo_path, cache), tmp_path / "src", os.urandom(5000))
    repo = reopen(repo_path, cache)
    assert repo.index_cache is not None
    path = repo.index_cache.path
    raw = path.read_bytes()
    if damage == "flip":
        path.write_bytes(raw[:-20] + bytes([raw[-20] ^ 1]) + raw[-19:])
    elif damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        # Another repository's cache (same key: a copied repository folder) put in its place.
        other = IndexCache(cache, "0" * 64)
        other.path.parent.mkdir()
        other.path.write_bytes(raw)
        repo = reopen(repo_path, cache)
        repo.index_cache = other
    reads = index_reads(repo, monkeypatch)
    repo.load_index()
    assert reads == repo.list_index_files()
    assert state(repo.index) == full_state(repo_path)
    if damage != "other-repository":
        assert path.read_bytes() != raw[: len(raw) // 2]  # written again
        fresh = reopen(repo_path, cache)
        reads = index_reads(fresh, monkeypatch)
        fresh.load_index()
        assert reads == []


def test_an_unwritable_cache_folder_changes_nothing(repo_path: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    backup(reopen(repo_path, blocker / "cache"), tmp_path / "src", os.urandom(5000))
    repo = reopen(repo_path, blocker / "cache")
    repo.load_index()
    assert state(repo.index) == full_state(repo_path)


def test_packs_known_only_in_memory_are_never_cached(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    repo = reopen(repo_path, cache)
    repo.load_index()
    repo.index.add_pack(rec(9, CHAIN_A, 9))  # e.g. uploaded, but its index file never written
    written = repo.write_index([rec(8, CHAIN_A, 8)])
    repo.update_index_cache()
    fresh = reopen(repo_path, cache)
    reads = index_reads(fresh, monkeypatch)
    fresh.load_index()
    assert reads == []  # the cache covers the written file...
    assert bytes([8]) * 32 in fresh.index.packs
    assert bytes([9]) * 32 not in fresh.index.packs  # ...and nothing else
    assert written in fresh.list_index_files()


def test_check_style_loads_ignore_the_cache(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    backup(reopen(repo_path, cache), tmp_path / "src", os.urandom(5000))
    repo = reopen(repo_path, cache)
    reads = index_reads(repo, monkeypatch)
    assert repo.load_index(use_cache=False) == []
    assert reads == repo.list_index_files()


def test_the_cache_file_reveals_nothing_in_clear(repo_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    backup(reopen(repo_path, cache), tmp_path / "src", os.urandom(5000))
    repo = reopen(repo_path, None)
    repo.load_index()
    raw = (cache / repo.config.repo_id / FILE_NAME).read_bytes()
    for pack_id in repo.index.packs:
        assert pack_id not in raw and pack_id.hex().encode() not in raw
    for name in repo.list_index_files():
        assert name.encode() not in raw


def test_a_load_that_saw_a_file_vanish_is_not_cached(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup(reopen(repo_path, None), tmp_path / "src", os.urandom(5000))
    cache = tmp_path / "cache"
    repo = reopen(repo_path, cache)
    real = repo.list_index_files
    listings = iter([[*real(), "index/" + "0" * 64]])  # the first listing names a file...

    def listing() -> list[str]:
        return next(listings, None) or real()  # ...that is gone when read: loaded again

    monkeypatch.setattr(repo, "list_index_files", listing)
    repo.load_index()
    assert state(repo.index) == full_state(repo_path)
    assert repo.index_cache is not None and not repo.index_cache.path.exists()
