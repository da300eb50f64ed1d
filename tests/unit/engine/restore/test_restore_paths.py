"""Restore's fast paths: blobs opened into a scratch buffer, files created exclusively and
finished through their descriptors, blobs grouped into ranged reads."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import mmap
import os
import stat
from pathlib import Path

import pytest

from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.restore import write as restore_write
from safehold.engine.restore.folders import Folder
from safehold.engine.restore.restore import MAX_GAP, MAX_SPAN, RestoreOptions, run_restore, spans
from safehold.errors import FormatError, IntegrityError, SafeholdError, TargetError
from safehold.repository.chunker import ChunkerParams
from safehold.repository.format import BLOB_DATA
from safehold.repository.index import Location
from safehold.repository.repository import Repository, pack_name
from safehold.repository.snapshot import Snapshot
from safehold.storage.memory import MemoryStorage
from tests.conftest import FAST_KDF, PASSWORD
from tests.unit.engine.test_backup_restore import tree_state

SMALL_CHUNKS = ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024, seed=5)


def backup(repo: Repository, *paths: Path) -> Snapshot:
    return run_backup(repo, BackupOptions(paths=[str(p) for p in paths])).snapshot


def data_blobs(repo: Repository) -> list[tuple[bytes, Location, bytes]]:
    """Every data blob: (id, location, sealed bytes as stored)."""
    repo.load_index()
    out = []
    for rec in repo.index.packs.values():
        for e in rec.entries:
            if e.blob_type == BLOB_DATA:
                loc = repo.index.lookup(e.blob_id)
                assert loc is not None
                sealed = repo.storage.get(pack_name(loc.pack_id), loc.offset, loc.length)
                out.append((e.blob_id, loc, sealed))
    return out


def raised(fn: object, *args: object) -> SafeholdError:
    with pytest.raises(SafeholdError) as err:
        fn(*args)  # type: ignore[operator]
    return err.value


# --- Repository.open_blob_into ---------------------------------------------------------------


def test_open_blob_into_gives_what_open_blob_gives(mem_repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "text.txt").write_text("compressible line\n" * 50_000)
    (src / "noise.bin").write_bytes(os.urandom(200_000))
    backup(mem_repo, src)
    blobs = data_blobs(mem_repo)
    assert {sealed[0] for _id, _loc, sealed in blobs} == {0, 1}  # stored raw and zstd
    for blob_id, loc, sealed in blobs:
        want = mem_repo.open_blob(blob_id, sealed, loc.raw_length, "here")
        scratch = bytearray(len(sealed))
        got = mem_repo.open_blob_into(blob_id, sealed, loc.raw_length, "here", scratch)
        assert bytes(got) == want
        if sealed[0] == 0:  # uncompressed: a view of the scratch buffer, no copy
            assert isinstance(got, memoryview) and got.obj is scratch
        # A scratch buffer that is too small falls back to the allocating path.
        small = mem_repo.open_blob_into(blob_id, sealed, loc.raw_length, "here", bytearray(8))
        assert bytes(small) == want


def test_open_blob_into_fails_as_open_blob_does(mem_repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "text.txt").write_text("compressible line\n" * 5_000)
    backup(mem_repo, src)
    blob_id, loc, sealed = data_blobs(mem_repo)[0]
    flipped = bytearray(sealed)
    flipped[40] ^= 0x01
    bad_cipher = bytearray(sealed)
    bad_cipher[1] = 9
    other_id = bytes(32)
    cases = [
        (blob_id, bytes(flipped), IntegrityError),
        (blob_id, bytes(bad_cipher), FormatError),
        (other_id, sealed, IntegrityError),
        (blob_id, sealed[:20], IntegrityError),
        (blob_id, b"", IntegrityError),
    ]
    for bid, data, kind in cases:
        want = raised(mem_repo.open_blob, bid, data, loc.raw_length, "pack X")
        got = raised(
            mem_repo.open_blob_into, bid, data, loc.raw_length, "pack X", bytearray(1 << 20)
        )
        assert type(got) is type(want) is kind
        assert str(got) == str(want)


# --- grouping blobs into reads ---------------------------------------------------------------


def _blob(offset: int, length: int) -> tuple[int, int, int, bytes, list[object]]:
    return (offset, length, length, b"", [])


def test_spans_join_near_blobs_and_stay_bounded() -> None:
    blobs = [
        _blob(0, 100),
        _blob(100, 100),  # adjacent
        _blob(200 + MAX_GAP - 1, 10),  # just within the gap
        _blob(200 + 2 * MAX_GAP + 20, 10),  # too far: a new read
        _blob(MAX_SPAN * 3, MAX_SPAN + 5),  # larger than a span on its own
        _blob(MAX_SPAN * 4 + 5, 10),  # would make that read longer than MAX_SPAN
    ]
    got = [(start, end, [b[0] for b in group]) for start, end, group in spans(blobs)]  # type: ignore[arg-type]
    assert got == [
        (0, 200 + MAX_GAP + 9, [0, 100, 200 + MAX_GAP - 1]),
        (200 + 2 * MAX_GAP + 20, 200 + 2 * MAX_GAP + 30, [200 + 2 * MAX_GAP + 20]),
        (MAX_SPAN * 3, MAX_SPAN * 4 + 5, [MAX_SPAN * 3]),
        (MAX_SPAN * 4 + 5, MAX_SPAN * 4 + 15, [MAX_SPAN * 4 + 5]),
    ]
    assert spans([]) == []


# --- files: many blobs, shared blobs, many packs ---------------------------------------------


def test_files_of_many_shared_blobs_from_many_packs(tmp_path: Path) -> None:
    repo = Repository.init(
        MemoryStorage(), PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=256 * 1024
    )
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(3 * 1024 * 1024)
    (src / "big.bin").write_bytes(big)
    (src / "copy.bin").write_bytes(big)  # every blob shared with big.bin
    block = os.urandom(300 * 1024)  # above max_size: cut at the same points each time
    (src / "repeats.bin").write_bytes(block * 6)  # the same blobs several times in one file
    (src / "mixed.bin").write_bytes(big[: 1024 * 1024] + b"tail" * 1000)
    for i in range(50):
        (src / f"small{i}.txt").write_text(f"small file {i}\n" * (i + 1))
    snap = backup(repo, src)
    repo.load_index()
    assert len(repo.index.packs) > 10
    out = tmp_path / "out"
    run_restore(repo, snap, RestoreOptions(target=str(out), threads=4))
    assert tree_state(out / str(src).lstrip("/")) == tree_state(src)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"some text\n" * 100, "decompressed 1000 bytes, expected 1001"),
        (os.urandom(1000), "has 1000 bytes, the index says 1001"),  # stored uncompressed
    ],
)
def test_a_blob_whose_size_disagrees_with_the_index_is_refused(
    mem_repo: Repository, tmp_path: Path, content: bytes, message: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(content)
    snap = backup(mem_repo, src)
    mem_repo.load_index()
    real_lookup = mem_repo.index.lookup

    def lying_lookup(blob_id: bytes) -> Location | None:
        loc = real_lookup(blob_id)
        if loc is not None and loc.blob_type == BLOB_DATA:
            return dataclasses.replace(loc, raw_length=loc.raw_length + 1)
        return loc

    mem_repo.index.lookup = lying_lookup  # type: ignore[method-assign]
    with pytest.raises(IntegrityError, match=message):
        run_restore(mem_repo, snap, RestoreOptions(target=str(tmp_path / "out")))


def test_a_failed_restore_leaves_no_file_open(mem_repo: Repository, tmp_path: Path) -> None:
    repo = Repository.init(
        MemoryStorage(), PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=256 * 1024
    )
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    snap = backup(repo, src)
    blob_id, loc, _sealed = data_blobs(repo)[-1]
    name = pack_name(loc.pack_id)
    pack = bytearray(repo.storage.get(name))
    pack[loc.offset + 40] ^= 0x01
    repo.storage.put(name, bytes(pack))
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(IntegrityError, match=blob_id.hex()[:8]):
        run_restore(repo, snap, RestoreOptions(target=str(tmp_path / "out"), threads=3))
    assert set(os.listdir("/proc/self/fd")) <= before


# --- what is already at the target -----------------------------------------------------------


def test_restore_replaces_what_is_in_the_way(mem_repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "longer.txt").write_text("new\n")
    (src / "was-link.txt").write_text("restored content\n")
    (src / "was-fifo.txt").write_text("restored too\n")
    os.chmod(src / "longer.txt", 0o640)
    snap = backup(mem_repo, src)
    out = tmp_path / "out"
    dest = out / str(src).lstrip("/")
    dest.mkdir(parents=True)
    (dest / "longer.txt").write_text("an old and much longer content\n" * 100)
    outside = tmp_path / "outside.txt"
    outside.write_text("must stay\n")
    os.symlink(outside, dest / "was-link.txt")
    os.mkfifo(dest / "was-fifo.txt")

    run_restore(mem_repo, snap, RestoreOptions(target=str(out)))
    assert tree_state(dest) == tree_state(src)
    assert outside.read_text() == "must stay\n"
    assert stat.S_ISREG(os.lstat(dest / "was-link.txt").st_mode)


def test_a_link_in_place_of_a_folder_is_replaced_not_followed(
    mem_repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("inside\n")
    snap = backup(mem_repo, src)
    out = tmp_path / "out"
    dest = out / str(src).lstrip("/")
    dest.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, dest / "sub")
    run_restore(mem_repo, snap, RestoreOptions(target=str(out)))
    assert list(elsewhere.iterdir()) == []
    assert not os.path.islink(dest / "sub")
    assert tree_state(dest) == tree_state(src)


def test_without_overwrite_a_link_in_the_way_is_an_error(
    mem_repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("new\n")
    snap = backup(mem_repo, src)
    out = tmp_path / "out"
    dest = out / str(src).lstrip("/")
    dest.mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("must stay\n")
    os.symlink(outside, dest / "f.txt")
    with pytest.raises(TargetError, match=r"f\.txt"):
        run_restore(mem_repo, snap, RestoreOptions(target=str(out), overwrite=False))
    assert outside.read_text() == "must stay\n"


def test_a_folder_in_place_of_a_file_is_an_error(mem_repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x\n")
    snap = backup(mem_repo, src)
    out = tmp_path / "out"
    (out / str(src).lstrip("/") / "f.txt").mkdir(parents=True)
    with pytest.raises(TargetError, match=r"f\.txt"):
        run_restore(mem_repo, snap, RestoreOptions(target=str(out)))


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_owner_is_restored_as_root(mem_repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "theirs.txt").write_text("x\n")
    (src / "several.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    for name in ("theirs.txt", "several.bin"):
        os.chown(src / name, 1234, 5678)
    snap = backup(mem_repo, src)
    out = tmp_path / "out"
    run_restore(mem_repo, snap, RestoreOptions(target=str(out)))
    for name in ("theirs.txt", "several.bin"):
        st = os.stat(out / str(src).lstrip("/") / name)
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    run_restore(mem_repo, snap, RestoreOptions(target=str(tmp_path / "mine"), owner=False))
    st = os.stat(tmp_path / "mine" / str(src).lstrip("/") / "theirs.txt")
    assert (st.st_uid, st.st_gid) == (0, 0)


# --- writing ---------------------------------------------------------------------------------


def test_a_short_write_is_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite
    calls = []

    def short_pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        calls.append(offset)
        return real_pwrite(fd, memoryview(data)[:3], offset)

    monkeypatch.setattr(os, "pwrite", short_pwrite)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        restore_write.write_all(fd, b"0123456789", 5)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"\0" * 5 + b"0123456789"
    assert calls == [5, 8, 11, 14]


def _blobs_of(content: bytes, sizes: list[int]) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    for n in sizes:
        out.append((pos, content[pos : pos + n]))
        pos += n
    assert pos == len(content)
    return out


def _restore_pieces(
    writer: restore_write.FileWriter, path: Path, pieces: list[tuple[int, bytes]]
) -> None:
    size = sum(len(d) for _, d in pieces)
    with Folder.top(str(path.parent)) as folder:
        f = restore_write.OpenFile(folder, path.name, (0o100644, 0, 0, 0), size, len(pieces), False)
        if len(pieces) > 1:
            f.make_shared()
        done = 0
        for offset, data in pieces:
            done += writer.put(f, data, offset)
    assert done == 1 and f.fd == -1  # finished and closed by its last blob


# Blob sizes around the block size and the direct-write minimum, at unaligned offsets.
ODD_SIZES = [70_001, 4_095, 300_123, 1_500_007, 5_000, 2 * 1024 * 1024 + 4_096, 65_536]


def test_direct_writes_put_unaligned_blobs_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fcntl = fcntl.fcntl
    direct_on: list[int] = []

    def spy(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            direct_on.append(fd)
        return int(real_fcntl(fd, cmd, arg))

    monkeypatch.setattr(fcntl, "fcntl", spy)
    content = os.urandom(sum(ODD_SIZES))
    pieces = _blobs_of(content, ODD_SIZES)
    writer = restore_write.FileWriter(owner=False, overwrite=True)
    # Out of order, as workers deliver them.
    _restore_pieces(writer, tmp_path / "many", pieces[3:] + pieces[:3][::-1])
    assert (tmp_path / "many").read_bytes() == content
    _restore_pieces(writer, tmp_path / "one", [(0, content[:1_234_567])])
    assert (tmp_path / "one").read_bytes() == content[:1_234_567]
    # Asked for the five blobs of at least DIRECT_MIN + DIRECT_ALIGN bytes (four, and the
    # single one), and only for them.
    assert len(direct_on) == 5
    # Taken wherever the test's file system takes direct I/O (else switched off at once).
    assert writer.direct == _takes_direct_io(tmp_path)


def _takes_direct_io(folder: Path) -> bool:
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        buf = mmap.mmap(-1, restore_write.DIRECT_ALIGN)
        os.pwrite(fd, buf, 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["fcntl", "pwrite"])
def test_a_file_system_refusing_direct_writes_gets_buffered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Some file systems (FUSE, some network ones) refuse O_DIRECT when it is set, others
    # only refuse the write (a device with blocks larger than 4 KiB): both mean EINVAL.
    real_fcntl, real_pwrite = fcntl.fcntl, os.pwrite
    refused = []

    def refusing_fcntl(fd: int, cmd: int, arg: int = 0) -> int:
        if where == "fcntl" and cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return int(real_fcntl(fd, cmd, arg))

    def refusing_pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        if where == "pwrite" and real_fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(fcntl, "fcntl", refusing_fcntl)
    monkeypatch.setattr(os, "pwrite", refusing_pwrite)
    content = os.urandom(sum(ODD_SIZES))
    writer = restore_write.FileWriter(owner=False, overwrite=True)
    _restore_pieces(writer, tmp_path / "f", _blobs_of(content, ODD_SIZES))
    assert (tmp_path / "f").read_bytes() == content
    assert len(refused) == 1 and not writer.direct  # tried once, then never again


def test_buffered_restore_never_asks_for_direct_writes(
    mem_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = []
    real_fcntl = fcntl.fcntl

    def spy(fd: int, cmd: int, arg: int = 0) -> int:
        asked.append(cmd)
        return int(real_fcntl(fd, cmd, arg))

    monkeypatch.setattr(fcntl, "fcntl", spy)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(3_000_000))
    snap = backup(mem_repo, src)
    run_restore(mem_repo, snap, RestoreOptions(target=str(tmp_path / "b"), direct=False))
    assert not asked
    run_restore(mem_repo, snap, RestoreOptions(target=str(tmp_path / "d")))
    assert asked
    for target in ("b", "d"):
        got = tmp_path / target / str(src).lstrip("/") / "big.bin"
        assert got.read_bytes() == (src / "big.bin").read_bytes()
