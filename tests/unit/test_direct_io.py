"""Direct writes (safehold/direct_io.py); the local storage's use of them for packs is in
tests/unit/storage/test_local_direct.py."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from safehold import direct_io as direct
from safehold.direct_io import ALIGN, DirectWrites

DIRECT_FLAG = getattr(os, "O_DIRECT", 0)
pytestmark = pytest.mark.skipif(not DIRECT_FLAG, reason="no O_DIRECT on this platform")


def takes_direct_io(folder: Path) -> bool:
    """Whether the file system under ``folder`` accepts an aligned direct write."""
    w = DirectWrites()
    fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        w.write(fd, bytes(ALIGN), 0)
    finally:
        os.close(fd)
        os.unlink(folder / "probe")
    return w.enabled


def spy_direct(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every descriptor switched to direct I/O."""
    real = fcntl.fcntl
    asked: list[int] = []

    def spy(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & DIRECT_FLAG:
            asked.append(fd)
        return int(real(fd, cmd, arg))

    monkeypatch.setattr(fcntl, "fcntl", spy)
    return asked


def write_file(path: Path, w: DirectWrites, pieces: list[tuple[int, bytes]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for offset, data in pieces:
            w.write(fd, data, offset)
    finally:
        os.close(fd)


# Lengths and offsets around the block size and the staging piece, aligned and not.
CASES = [
    (0, ALIGN),
    (0, 3 * direct.PIECE + 17),
    (1, ALIGN),  # no whole block inside: buffered only
    (ALIGN - 1, 2 * ALIGN + 1),
    (5_000, 1_500_007),
    (ALIGN, direct.PIECE),
    (12_345, 100),
]


@pytest.mark.parametrize(("offset", "length"), CASES)
def test_any_offset_and_length_lands_in_place(tmp_path: Path, offset: int, length: int) -> None:
    data = os.urandom(length)
    path = tmp_path / "f"
    write_file(path, DirectWrites(), [(offset, data)])
    got = path.read_bytes()
    assert got[offset:] == data
    assert got[:offset] == bytes(offset)  # a hole before: zeros


def test_pieces_out_of_order_make_the_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = spy_direct(monkeypatch)
    sizes = [70_001, 4_095, 2 * direct.PIECE + ALIGN, 300_123, ALIGN, 9]
    content = os.urandom(sum(sizes))
    pieces, pos = [], 0
    for n in sizes:
        pieces.append((pos, content[pos : pos + n]))
        pos += n
    w = DirectWrites()
    write_file(tmp_path / "f", w, pieces[::-1])
    assert (tmp_path / "f").read_bytes() == content
    # Direct I/O is asked for exactly for the pieces with a whole block inside them.
    with_block = [o for o, d in pieces if len(d) - (-o % ALIGN) >= ALIGN]
    assert len(asked) == len(with_block)
    assert w.enabled == takes_direct_io(tmp_path)


def test_switched_off_never_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = spy_direct(monkeypatch)
    data = os.urandom(direct.PIECE * 2)
    write_file(tmp_path / "f", DirectWrites(enabled=False), [(0, data)])
    assert (tmp_path / "f").read_bytes() == data
    assert asked == []


def refuse(monkeypatch: pytest.MonkeyPatch, where: str) -> list[int]:
    """Makes the flag (``fcntl``) or the direct write itself (``pwrite``) fail with EINVAL,
    as a file system without direct I/O or a device with larger blocks does."""
    real_fcntl, real_pwrite = fcntl.fcntl, os.pwrite
    refused: list[int] = []

    def refusing_fcntl(fd: int, cmd: int, arg: int = 0) -> int:
        if where == "fcntl" and cmd == fcntl.F_SETFL and arg & DIRECT_FLAG:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return int(real_fcntl(fd, cmd, arg))

    def refusing_pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        if where == "pwrite" and real_fcntl(fd, fcntl.F_GETFL) & DIRECT_FLAG:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(fcntl, "fcntl", refusing_fcntl)
    monkeypatch.setattr(os, "pwrite", refusing_pwrite)
    return refused


@pytest.mark.parametrize("where", ["fcntl", "pwrite"])
def test_a_refusal_turns_direct_writes_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    refused = refuse(monkeypatch, where)
    w = DirectWrites()
    data = os.urandom(3 * direct.PIECE + 5)
    write_file(tmp_path / "a", w, [(7, data)])
    write_file(tmp_path / "b", w, [(0, data)])
    assert (tmp_path / "a").read_bytes()[7:] == data
    assert (tmp_path / "b").read_bytes() == data
    assert len(refused) == 1 and not w.enabled  # tried once, then never again
    flags = os.open(tmp_path / "a", os.O_RDONLY)
    try:
        assert not fcntl.fcntl(flags, fcntl.F_GETFL) & DIRECT_FLAG
    finally:
        os.close(flags)


def test_other_errors_are_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite

    def full(fd: int, data: bytes | memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & DIRECT_FLAG:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    w = DirectWrites()
    with pytest.raises(OSError) as caught:
        write_file(tmp_path / "f", w, [(0, os.urandom(2 * ALIGN))])
    assert caught.value.errno == errno.ENOSPC
    assert w.enabled  # a full disk says nothing about the file system's direct I/O


# --- which file systems get direct writes ---------------------------------------------------


def test_the_file_system_type_comes_from_the_mount_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = os.stat(tmp_path).st_dev
    here = f"{os.major(dev)}:{os.minor(dev)}"
    table = tmp_path / "mountinfo"
    for fstype, expected in [("ext4", True), ("xfs", True), ("nfs4", False), ("fuse.s3fs", False)]:
        table.write_text(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
            f"27 1 {here} / / rw,relatime shared:1 master:2 - {fstype} /dev/x rw\n"
        )
        monkeypatch.setattr(direct, "MOUNTINFO", str(table))
        assert direct.file_system_type(tmp_path / "not" / "made" / "yet") == fstype
        assert direct.suits_direct_io(tmp_path) == expected
    table.write_text("22 27 0:21 / /proc rw,relatime - proc proc rw\n")
    assert direct.file_system_type(tmp_path) == "" and not direct.suits_direct_io(tmp_path)


def _placed(data: bytes, offset: int) -> tuple[object, memoryview]:
    """``data`` in page-aligned memory at ``offset % ALIGN`` (the keeper must stay alive)."""
    import mmap

    shift = offset % ALIGN
    buf = mmap.mmap(-1, shift + len(data) + ALIGN)
    view = memoryview(buf)[shift : shift + len(data)]
    view[:] = data
    return buf, view


@pytest.mark.parametrize(("offset", "length"), CASES)
def test_aligned_data_lands_in_place_without_a_refusal(
    tmp_path: Path, offset: int, length: int
) -> None:
    data = os.urandom(length)
    _keep, view = _placed(data, offset)
    w = DirectWrites()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        w.write_aligned(fd, view, offset)
    finally:
        os.close(fd)
    got = (tmp_path / "f").read_bytes()
    assert got[offset:] == data
    assert got[:offset] == bytes(offset)
    assert w.enabled == takes_direct_io(tmp_path)  # placed right: the kernel took it


def test_misplaced_data_is_refused_and_still_written(tmp_path: Path) -> None:
    if not takes_direct_io(tmp_path):
        pytest.skip("this file system takes no direct writes")
    data = os.urandom(3 * ALIGN)
    _keep, view = _placed(b"\0" + data, 0)
    w = DirectWrites()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        w.write_aligned(fd, view[1:], 0)  # one byte off the block boundary
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
    assert not w.enabled  # the refusal turned direct writes off
