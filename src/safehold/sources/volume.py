"""The volume source: a large file or a block device (a VM disk image), sparse-aware.

Reading goes in large aligned pieces (``read_size``, 4 MiB by default). On a sparse file
the holes are found with ``SEEK_DATA``/``SEEK_HOLE`` and never read: they are served from
one preallocated buffer of zeros, so a 100 GiB image holding 2 GiB of data costs 2 GiB of
reading. The stream still carries the full logical size (zeros chunk to a handful of
deduplicated blobs), so a restore is byte-identical.

An optional freeze: with ``freeze: /mount/point`` the file system is frozen
(``fsfreeze -f``) before the image is opened and thawed (``fsfreeze -u``) when reading
ends, also when it fails. While frozen, writes to that file system wait, so this suits a
guest file system or a snapshot-capable setup rather than hours of upload; the commands
are configurable (``freeze_command``/``thaw_command``, ``{mountpoint}`` is replaced).

Restoring writes a file sparse (all-zero blocks are skipped, then the file is truncated to
its size) through a temporary file renamed into place, or a block device in full (every
block, zeros included, since the device holds older data); a device smaller than the image
is refused.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO, cast

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator

from safehold.errors import SourceError, TargetError, UsageError
from safehold.sources.base import RestoreRequest, SnapshotFiles, Stream, StreamContent
from safehold.sources.process import ToolMissing

__all__ = ["Settings", "VolumeSource", "build"]

log = logging.getLogger(__name__)

_MIB = 1 << 20
# Restored files skip writing runs of zeros at this granularity (a common file system
# block multiple); a block holding one non-zero byte is written whole.
_SPARSE_BLOCK = 64 * 1024
_FREEZE_TIMEOUT = 120.0


class Settings(BaseModel):
    """``type: volume`` — one image file or block device."""

    model_config = ConfigDict(extra="forbid")

    path: str
    # The file name of the image at the snapshot's root (default: the path's last part).
    name: str | None = None
    read_size: ByteSize = Field(default=ByteSize(4 * _MIB), ge=_SPARSE_BLOCK)
    freeze: str | None = None
    freeze_command: list[str] = Field(default_factory=lambda: ["fsfreeze", "-f", "{mountpoint}"])
    thaw_command: list[str] = Field(default_factory=lambda: ["fsfreeze", "-u", "{mountpoint}"])

    @field_validator("read_size")
    @classmethod
    def _aligned(cls, size: ByteSize) -> ByteSize:
        if size % _SPARSE_BLOCK:
            raise ValueError(f"must be a multiple of {_SPARSE_BLOCK} bytes, e.g. 4MiB")
        return size

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        if name is not None and (not name or "/" in name or name in {".", ".."}):
            raise ValueError("must be a plain file name (no '/'), e.g. 'vm-disk.img'")
        return name

    @field_validator("freeze_command", "thaw_command")
    @classmethod
    def _not_empty(cls, cmd: list[str]) -> list[str]:
        if not cmd:
            raise ValueError("the command is empty")
        return cmd


# --- reading -------------------------------------------------------------------------------


class _VolumeReader(io.RawIOBase):
    """Reads an image in aligned pieces, serving holes from a zero buffer without reading."""

    def __init__(self, fd: int, size: int, piece: int, path: str) -> None:
        self._fd = fd
        self._size = size
        self._path = path
        self._pos = 0  # the next byte of the image to put into a piece
        self._piece = bytearray(piece)
        self._zeros = memoryview(bytes(piece))
        self._out = memoryview(b"")  # the rest of the current piece, not yet handed out
        # The current data extent [start, end); holes lie outside. None: look it up.
        self._extent: tuple[int, int] | None = None
        self._sparse = True
        self.holes_skipped = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._out:
            if self._pos >= self._size:
                return 0
            self._out = self._next_piece()
        view = memoryview(buf).cast("B")
        n = min(len(view), len(self._out))
        view[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _next_piece(self) -> memoryview:
        start = self._pos
        end = min(start + len(self._piece), self._size)
        self._pos = end
        first, last = self._data_at(start)
        if first >= end:  # the whole piece is a hole
            self.holes_skipped += end - start
            return self._zeros[: end - start]
        out = memoryview(self._piece)[: end - start]
        pos = start
        while pos < end:
            first, last = self._data_at(pos)
            first, last = min(first, end), min(last, end)
            if first > pos:
                out[pos - start : first - start] = self._zeros[: first - pos]
                self.holes_skipped += first - pos
            if last > first:
                self._pread(out[first - start : last - start], first)
            pos = max(last, first)
        return out

    def _data_at(self, pos: int) -> tuple[int, int]:
        """The data extent at or after ``pos``: (size, size) when only holes remain."""
        if not self._sparse:
            return pos, self._size
        ext = self._extent
        if ext is not None and ext[0] <= pos < ext[1]:
            return pos, ext[1]
        if ext is not None and pos < ext[0]:
            return ext
        try:
            first = os.lseek(self._fd, pos, os.SEEK_DATA)
            last = os.lseek(self._fd, first, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos: a hole to the end
                first = last = self._size
            else:  # a device or a file system without hole support: all data
                self._sparse = False
                return pos, self._size
        self._extent = (min(first, self._size), min(last, self._size))
        return self._extent

    def _pread(self, view: memoryview, offset: int) -> None:
        while view:
            got = os.preadv(self._fd, [view], offset)
            if got == 0:
                raise SourceError(
                    f"{self._path!r} ended at byte {offset} while being read "
                    f"(it was {self._size} bytes): it shrank during the backup"
                )
            view, offset = view[got:], offset + got


def _image_size(fd: int, st: os.stat_result) -> int:
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    return os.lseek(fd, 0, os.SEEK_END)  # a block device: its size in bytes


def _run(argv: list[str], what: str) -> None:
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_FREEZE_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolMissing(
            f"{what}: {argv[0]!r} was not found",
            hint="install it (fsfreeze: apt-get install util-linux) or set "
            "freeze_command/thaw_command",
        ) from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"{what}: {argv[0]!r} failed: {exc}") from exc
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip()
        raise SourceError(f"{what}: {argv[0]!r} exited with status {proc.returncode}: {detail}")


@contextmanager
def _frozen(settings: Settings) -> Iterator[None]:
    """Freezes ``settings.freeze`` for the body; the thaw always runs once a freeze ran."""
    mount = settings.freeze
    if mount is None:
        yield
        return
    freeze = [a.replace("{mountpoint}", mount) for a in settings.freeze_command]
    thaw = [a.replace("{mountpoint}", mount) for a in settings.thaw_command]
    try:
        _run(freeze, f"freezing {mount!r}")
    except SourceError:
        # A freeze that failed or timed out may still have frozen the file system.
        with suppress(SourceError):
            _run(thaw, f"thawing {mount!r}")
        raise
    try:
        yield
    except BaseException:
        try:
            _run(thaw, f"thawing {mount!r}")
        except SourceError as exc:
            log.error("%s; the file system may still be frozen: run %s", exc, " ".join(thaw))
        raise
    try:
        _run(thaw, f"thawing {mount!r}")
    except SourceError as exc:
        raise SourceError(
            str(exc), hint=f"the file system may still be frozen: run {' '.join(thaw)}"
        ) from exc


@contextmanager
def _open_volume(settings: Settings) -> Iterator[BinaryIO]:
    path = settings.path
    with _frozen(settings):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"cannot open volume {path!r}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                raise SourceError(f"volume {path!r} is neither a file nor a block device")
            reader = _VolumeReader(fd, _image_size(fd, st), settings.read_size, path)
            yield cast(BinaryIO, reader)
            log.debug("volume %s: %d bytes of holes skipped", path, reader.holes_skipped)
        finally:
            os.close(fd)


# --- restoring -----------------------------------------------------------------------------


def _pieces(src: BinaryIO, size: int) -> Iterator[memoryview]:
    """Full ``size``-byte pieces of ``src`` (the last may be short), in one reused buffer."""
    buf = bytearray(size)
    view = memoryview(buf)
    while True:
        filled = 0
        while filled < size:
            got = src.readinto(view[filled:])  # type: ignore[attr-defined]  # every reader has it
            if not got:
                break
            filled += got
        if not filled:
            return
        yield view[:filled]
        if filled < size:
            return


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


_ZERO_BLOCK = bytes(_SPARSE_BLOCK)


def _write_sparse(fd: int, piece: memoryview, offset: int) -> None:
    """Writes the non-zero blocks of ``piece``; runs of them go out in one call."""
    run_start = None
    for at in range(0, len(piece), _SPARSE_BLOCK):
        block = piece[at : at + _SPARSE_BLOCK]
        # bytes == bytes is one memcmp; memoryview == memoryview compares item by item.
        if block.tobytes() == _ZERO_BLOCK[: len(block)]:
            if run_start is not None:
                _write_all(fd, piece[run_start:at], offset + run_start)
                run_start = None
        elif run_start is None:
            run_start = at
    if run_start is not None:
        _write_all(fd, piece[run_start:], offset + run_start)


class VolumeSource:
    kind = "volume"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.name or os.path.basename(settings.path.rstrip("/")) or "volume"

    def content(self) -> StreamContent:
        return StreamContent([Stream(self.name, lambda: _open_volume(self.settings))])

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        target = os.path.abspath(request.target or self.settings.path)
        size = files.size(self.name)
        try:
            st: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISBLK(st.st_mode):
            self._restore_device(files, target, size, request.replace)
            return
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"restore target {target!r} is neither a file nor a device")
            if st.st_size > 0 and not request.replace:
                raise UsageError(
                    f"restore target {target!r} already holds data",
                    hint="stop what uses it and restore with --replace, or restore elsewhere",
                )
        self._restore_file(files, target, size, st)

    def _restore_file(
        self, files: SnapshotFiles, target: str, size: int, old: os.stat_result | None
    ) -> None:
        folder = os.path.dirname(target)
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(target)}.", suffix=".restoring", dir=folder
            )
        except OSError as exc:
            raise TargetError(f"cannot write in {folder!r}: {exc.strerror}") from exc
        try:
            offset = 0
            try:
                with files.open(self.name) as src:
                    for piece in _pieces(src, self.settings.read_size):
                        _write_sparse(fd, piece, offset)
                        offset += len(piece)
                # Trailing holes: the size comes from the length, not from writes.
                os.ftruncate(fd, offset)
                os.fsync(fd)
            except OSError as exc:
                raise TargetError(f"writing {tmp!r} failed: {exc.strerror}") from exc
            finally:
                os.close(fd)
            if offset != size:
                raise SourceError(f"the saved image is {offset} bytes, expected {size}")
            if old is not None:
                os.chmod(tmp, old.st_mode & 0o7777)
                with suppress(PermissionError):
                    os.chown(tmp, old.st_uid, old.st_gid)
            os.replace(tmp, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _restore_device(self, files: SnapshotFiles, target: str, size: int, replace: bool) -> None:
        if not replace:
            # Whether a device holds data cannot be told without reading all of it.
            raise UsageError(
                f"restore target {target!r} is a block device; its contents would be overwritten",
                hint="make sure nothing uses it, then restore with --replace",
            )
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TargetError(f"cannot open device {target!r}: {exc.strerror}") from exc
        try:
            device_size = os.lseek(fd, 0, os.SEEK_END)
            if device_size < size:
                raise UsageError(
                    f"device {target!r} holds {device_size} bytes, the image {size}",
                    hint="restore to a device at least as large, or to a file",
                )
            offset = 0
            try:
                with files.open(self.name) as src:
                    for piece in _pieces(src, self.settings.read_size):
                        _write_all(fd, piece, offset)
                        offset += len(piece)
                os.fsync(fd)
            except OSError as exc:
                raise TargetError(f"writing device {target!r} failed: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"VolumeSource(path={self.settings.path!r})"


def build(settings: Settings) -> VolumeSource:
    return VolumeSource(settings)
