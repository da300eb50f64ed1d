"""The volume source: sparse-aware aligned reading, sparse restore, freeze/thaw ordering."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import pytest

from safehold.errors import ConfigError, ExitCode, SourceError, TargetError
from safehold.sources.base import RestoreRequest, Stream
from safehold.sources.process import ToolMissing
from safehold.sources.volume import Settings, VolumeSource, build
from tests.unit.sources.memfiles import MemoryFiles, read_stream

MIB = 1 << 20
SIZE = 256 * MIB
# Data islands: offset -> length; unaligned edges on purpose.
ISLANDS = {0: 4096, 7 * MIB + 123: 3 * MIB, 100 * MIB: 64 * 1024, SIZE - 5000: 5000}


def make_sparse(path: Path) -> dict[int, bytes]:
    """A sparse file with data islands; returns them by offset (the rest is zeros)."""
    islands = {off: os.urandom(length) for off, length in ISLANDS.items()}
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for off, island in islands.items():
            f.seek(off)
            f.write(island)
    return islands


def expected_at(islands: dict[int, bytes], start: int, n: int) -> bytes:
    """What bytes [start, start + n) of the image must be."""
    out = bytearray(n)
    for off, island in islands.items():
        lo, hi = max(off, start), min(off + len(island), start + n)
        if lo < hi:
            out[lo - start : hi - start] = island[lo - off : hi - off]
    return bytes(out)


def assert_stream_is_image(stream: Stream, islands: dict[int, bytes], piece: int) -> None:
    """Compares piece by piece: a 256 MiB buffer costs seconds of page faults here."""
    buf = bytearray(piece)
    pos = 0
    with stream.open() as r:
        while got := r.readinto(buf):  # type: ignore[attr-defined]
            assert buf[:got] == expected_at(islands, pos, got), f"differs near byte {pos}"
            pos += got
    assert pos == SIZE


def assert_file_is_image(path: Path, islands: dict[int, bytes]) -> None:
    """Reads only the data extents (a hole is zeros by definition), then checks that no
    island fell into a hole."""
    assert os.path.getsize(path) == SIZE
    with open(path, "rb") as f:
        fd, pos = f.fileno(), 0
        while pos < SIZE:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            assert os.pread(fd, end - start, start) == expected_at(islands, start, end - start)
            pos = end
        for off, island in islands.items():
            assert os.pread(fd, len(island), off) == island


class StreamFiles:
    """SnapshotFiles serving a source's own stream: restores without holding 256 MiB."""

    def __init__(self, stream: Stream, size: int) -> None:
        self.stream, self._size = stream, size

    def names(self) -> list[str]:
        return [self.stream.name]

    def size(self, name: str) -> int:
        return self._size

    def open(self, name: str) -> AbstractContextManager[BinaryIO]:
        assert name == self.stream.name
        return self.stream.open()


def is_sparse_capable(folder: Path) -> bool:
    probe = folder / "probe"
    with open(probe, "wb") as f:
        f.truncate(16 * MIB)
    sparse = os.stat(probe).st_blocks * 512 < MIB
    probe.unlink()
    return sparse


@pytest.fixture
def sparse_dir(tmp_path: Path) -> Path:
    if not is_sparse_capable(tmp_path):
        pytest.skip("the temporary folder's file system does not keep sparse files")
    return tmp_path


def test_sparse_image_round_trip_stays_sparse(sparse_dir: Path) -> None:
    img = sparse_dir / "disk.img"
    islands = make_sparse(img)
    src = build(Settings(path=str(img)))
    (stream,) = src.content().streams
    assert stream.name == "disk.img"
    # Odd read sizes: the source's aligned pieces must still line up.
    assert_stream_is_image(stream, islands, piece=3 * MIB + 7)

    out = sparse_dir / "restored.img"
    src.restore(StreamFiles(stream, SIZE), RestoreRequest(target=str(out)))
    assert_file_is_image(out, islands)
    # Holes stayed holes: allocated space is near the data (64 KiB blocks), not 256 MiB.
    assert os.stat(out).st_blocks * 512 < sum(ISLANDS.values()) + 8 * 64 * 1024
    assert not list(sparse_dir.glob(".restored.img.*"))  # no temporary file left


def test_holes_are_not_read(sparse_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = sparse_dir / "disk.img"
    islands = make_sparse(img)
    read = 0
    real = os.preadv

    def counting(fd: int, bufs: list[memoryview], offset: int) -> int:
        nonlocal read
        got = real(fd, bufs, offset)
        read += got
        return got

    monkeypatch.setattr(os, "preadv", counting)
    assert_stream_is_image(build(Settings(path=str(img))).content().streams[0], islands, MIB)
    # Only data extents (rounded to the file system's block) were read.
    assert read < sum(ISLANDS.values()) + 16 * 4096


def test_a_file_without_holes_reads_whole(tmp_path: Path) -> None:
    img = tmp_path / "full.img"
    payload = os.urandom(5 * MIB + 17)
    img.write_bytes(payload)
    data = read_stream(build(Settings(path=str(img), read_size=MIB)).content().streams[0])
    assert data == payload


def test_empty_image(tmp_path: Path) -> None:
    img = tmp_path / "empty.img"
    img.write_bytes(b"")
    src = build(Settings(path=str(img)))
    assert read_stream(src.content().streams[0]) == b""
    out = tmp_path / "out.img"
    src.restore(MemoryFiles({"empty.img": b""}), RestoreRequest(target=str(out)))
    assert out.read_bytes() == b""


def test_restore_refuses_a_target_with_data_unless_replace(tmp_path: Path) -> None:
    src = build(Settings(path=str(tmp_path / "disk.img"), read_size=MIB))
    files = MemoryFiles({"disk.img": b"new" * 1000})
    target = tmp_path / "disk.img"
    target.write_bytes(b"old data")
    with pytest.raises(TargetError, match="already holds data"):
        src.restore(files, RestoreRequest())
    assert target.read_bytes() == b"old data"
    target.chmod(0o640)
    src.restore(files, RestoreRequest(replace=True))
    assert target.read_bytes() == b"new" * 1000
    assert target.stat().st_mode & 0o777 == 0o640  # the replaced file's mode is kept
    # An existing but empty file is no data to protect.
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    src.restore(files, RestoreRequest(target=str(empty)))
    assert empty.read_bytes() == b"new" * 1000


def test_restore_refuses_a_folder(tmp_path: Path) -> None:
    src = build(Settings(path=str(tmp_path / "x.img")))
    with pytest.raises(TargetError, match="neither a file nor a device"):
        src.restore(MemoryFiles({"x.img": b"1"}), RestoreRequest(target=str(tmp_path)))


def test_a_missing_volume_is_a_source_error(tmp_path: Path) -> None:
    stream = build(Settings(path=str(tmp_path / "nope.img"))).content().streams[0]
    with pytest.raises(SourceError, match="cannot open volume"):
        read_stream(stream)


def test_a_volume_that_shrinks_while_read_fails(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(4 * MIB))
    stream = build(Settings(path=str(img), read_size=MIB)).content().streams[0]
    with pytest.raises(SourceError, match="shrank"), stream.open() as r:
        buf = bytearray(MIB)
        r.readinto(buf)  # type: ignore[attr-defined]
        os.truncate(img, MIB + 10)
        while r.readinto(buf):  # type: ignore[attr-defined]
            pass


# --- freeze / thaw -------------------------------------------------------------------------


def _logger(log: Path, word: str) -> list[str]:
    """A harmless stand-in for fsfreeze: appends ``word MOUNT`` to ``log``."""
    code = f"import sys; open({str(log)!r}, 'a').write({word!r} + ' ' + sys.argv[1] + '\\n')"
    return [sys.executable, "-c", code, "{mountpoint}"]


def _frozen_source(tmp_path: Path, log: Path, **extra: object) -> VolumeSource:
    img = tmp_path / "disk.img"
    if not img.exists():
        img.write_bytes(b"x" * 1000)
    settings: dict[str, object] = {
        "path": str(img),
        "freeze": "/srv/vm",
        "freeze_command": _logger(log, "freeze"),
        "thaw_command": _logger(log, "thaw"),
        **extra,
    }
    return build(Settings.model_validate(settings))


def test_freeze_before_reading_and_thaw_after(tmp_path: Path) -> None:
    log = tmp_path / "log"
    stream = _frozen_source(tmp_path, log).content().streams[0]
    with stream.open() as r:
        assert log.read_text() == "freeze /srv/vm\n"  # frozen while reading
        assert r.read() == b"x" * 1000
    assert log.read_text() == "freeze /srv/vm\nthaw /srv/vm\n"


def test_thaw_runs_when_reading_fails(tmp_path: Path) -> None:
    log = tmp_path / "log"
    stream = _frozen_source(tmp_path, log).content().streams[0]
    with pytest.raises(RuntimeError, match="upload failed"), stream.open():
        raise RuntimeError("upload failed")
    assert log.read_text() == "freeze /srv/vm\nthaw /srv/vm\n"


def test_thaw_runs_when_the_volume_cannot_be_opened(tmp_path: Path) -> None:
    log = tmp_path / "log"
    src = _frozen_source(tmp_path, log, path=str(tmp_path / "missing.img"))
    with pytest.raises(SourceError, match="cannot open volume"):
        read_stream(src.content().streams[0])
    assert log.read_text() == "freeze /srv/vm\nthaw /srv/vm\n"


def test_a_failing_freeze_stops_the_backup_and_still_thaws(tmp_path: Path) -> None:
    log = tmp_path / "log"
    bad = [sys.executable, "-c", "import sys; sys.stderr.write('not mounted'); sys.exit(1)"]
    src = _frozen_source(tmp_path, log, freeze_command=bad)
    with pytest.raises(SourceError, match="not mounted"):
        read_stream(src.content().streams[0])
    assert log.read_text() == "thaw /srv/vm\n"


def test_a_failing_thaw_is_loud(tmp_path: Path) -> None:
    log = tmp_path / "log"
    bad = [sys.executable, "-c", "import sys; sys.exit(3)"]
    src = _frozen_source(tmp_path, log, thaw_command=bad)
    with pytest.raises(SourceError, match="status 3") as err:
        read_stream(src.content().streams[0])
    assert "may still be frozen" in str(err.value)


def test_a_missing_freeze_tool_names_its_package(tmp_path: Path) -> None:
    log = tmp_path / "log"
    src = _frozen_source(tmp_path, log, freeze_command=["no-such-fsfreeze", "-f", "{mountpoint}"])
    with pytest.raises(ToolMissing, match="no-such-fsfreeze") as err:
        read_stream(src.content().streams[0])
    assert "util-linux" in str(err.value)
    assert log.read_text() == "thaw /srv/vm\n"


def _fake_fsfreeze(tmp_path: Path, log: Path) -> dict[str, list[str]]:
    """Commands run by a stand-in *named* fsfreeze (so the mount point checks apply) that
    only logs: a check that let a wrong path by would freeze nothing."""
    fake = tmp_path / "bin" / "fsfreeze"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    return {
        "freeze_command": [str(fake), "-f", "{mountpoint}"],
        "thaw_command": [str(fake), "-u", "{mountpoint}"],
    }


def test_freeze_refuses_a_folder_that_is_not_a_mount_point(tmp_path: Path) -> None:
    log = tmp_path / "log"
    folder = tmp_path / "images"
    folder.mkdir()
    owner = subprocess.run(
        ["findmnt", "--noheadings", "--output", "TARGET", "--target", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    commands = _fake_fsfreeze(tmp_path, log)
    src = _frozen_source(tmp_path, log, freeze=str(folder), **commands)
    with pytest.raises(ConfigError) as err:
        read_stream(src.content().streams[0])
    assert err.value.exit_code == ExitCode.USAGE
    assert f"{str(folder)!r} is not a mount point" in err.value.message
    assert f"on the file system mounted at {owner!r}" in err.value.message
    # A path that does not exist is no mount point either.
    src = _frozen_source(tmp_path, log, freeze=str(tmp_path / "gone"), **commands)
    with pytest.raises(ConfigError, match="does not exist"):
        read_stream(src.content().streams[0])
    assert not log.exists()  # nothing was frozen, nor thawed


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        Settings(path="/x", read_size=1000 * 1000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plain file name"):
        Settings(path="/x", name="a/b")
    with pytest.raises(ValueError, match="extra"):
        Settings.model_validate({"path": "/x", "freez": "/mnt"})
    assert Settings.model_validate({"path": "/x", "read_size": "8MiB"}).read_size == 8 * MIB
