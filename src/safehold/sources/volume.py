"""The volume source: a large file or a block device (a VM disk image), sparse-aware.

Reading goes in large aligned pieces (``read_size``, 4 MiB by default). On a sparse file
the holes are found with ``SEEK_DATA``/``SEEK_HOLE`` and never read: they are served from
one preallocated buffer of zeros, so a 100 GiB image holding 2 GiB of data costs 2 GiB of
reading. The stream still carries the full logical size (zeros chunk to a handful of
deduplicated blobs), so a restore is byte-identical.

A block device is read with direct I/O (``O_DIRECT``), past the device's page cache. A
file system mounted from the device writes its files' data from their own caches straight
to the device, never through the device's cache, so blocks of the device that an earlier
read left in its cache go stale, and a buffered read, even right after a freeze, returns
them: a file written three times through the mount, each write backed up with a freeze,
came back as NULs in the second and third images. A direct read asks the device every
time, so what is stored is what the device holds after the freeze. Chosen over flushing
the device's cache after the freeze (``BLKFLSBUF``, then ``posix_fadvise(DONTNEED)``):
that ioctl needs ``CAP_SYS_ADMIN`` (a backup user in the ``disk`` group may only read),
drops only pages nothing holds, and a buffered read of a large device then pushes the
machine's working set out of its page cache. Direct reads want page-aligned memory (the
piece is an anonymous mapping) and offsets and lengths aligned to the device's block
size (pieces are multiples of 64 KiB; a device's size is a multiple of its block size).
Losing read-ahead costs nothing at 4 MiB a read, and the page-cache copy goes: on 1 GiB
loop devices (medians of 5 interleaved runs) reading alone went 462 -> 1954 MiB/s with the
backing file out of the cache, 737 -> 6400 with it cached, 535 -> 914 on a loop device in
direct-I/O mode; a whole backup 297 -> 458 and 271 -> 349 MiB/s. Image files are read
through the page cache as before: it is the file's own, so it sees every write to it.

An optional freeze: with ``freeze: /mount/point`` the file system is frozen
(``fsfreeze -f``) before the image is opened and thawed (``fsfreeze -u``) when reading
ends, also when it fails. While frozen, writes to that file system wait, so this suits a
guest file system or a snapshot-capable setup rather than hours of upload; the commands
are configurable (``freeze_command``/``thaw_command``, ``{mountpoint}`` is replaced).
fsfreeze freezes the whole file system holding the path it is given, so the path must be
a mount point, and the device's own mount point when the volume is a mounted device
(:func:`check_freeze`); anything else is refused before freezing. A mounted device read
without a freeze is read all the same (it may be mounted read-only), with a warning.

Restoring writes a file sparse (all-zero blocks are skipped, then the file is truncated to
its size) through a temporary file renamed into place, or a block device in full (every
block, zeros included, since the device holds older data); a device smaller than the image,
or one that is mounted or held (the kernel refuses its exclusive open), is refused. Every
refused or unwritable target is a :class:`~safehold.errors.TargetError` (exit 7).
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import mmap
import os
import re
import shlex
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO, cast

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator

from safehold.errors import ConfigError, SourceError, TargetError
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

    def __init__(self, fd: int, size: int, piece: int, path: str, *, direct: bool) -> None:
        self._fd = fd
        self._size = size
        self._path = path
        self._pos = 0  # the next byte of the image to put into a piece
        # Direct reads need page-aligned memory: anonymous mappings are.
        self._piece: bytearray | mmap.mmap = mmap.mmap(-1, piece) if direct else bytearray(piece)
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


def _read_direct(fd: int, path: str) -> None:
    """Turns on direct reads for a device (see the module docstring for why)."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError as exc:
        raise SourceError(
            f"cannot read device {path!r} directly (O_DIRECT): {exc.strerror}",
            hint="a read through the page cache could store stale blocks of a mounted "
            "file system; back up a snapshot of the device or an image file instead",
        ) from exc


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
            f"{what}: {shlex.quote(argv[0])} was not found",
            hint="install it (fsfreeze: apt-get install util-linux) or set "
            "freeze_command/thaw_command",
        ) from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"{what}: {shlex.join(argv)} failed: {exc}") from exc
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip()
        raise SourceError(
            f"{what}: {shlex.join(argv)} exited with status {proc.returncode}: {detail}"
        )


# --- freeze ---------------------------------------------------------------------------------

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class _Mount:
    point: str  # where it is mounted
    device: tuple[int, int]  # the file system's device number (major, minor)


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[_Mount] | None:
    """This process's mounts (None if the mount table cannot be read)."""
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        # id parent major:minor root mount-point options [optional...] - type source ...
        fields = line.split()
        if len(fields) < 5 or ":" not in fields[2]:
            continue
        major, _, minor = fields[2].partition(":")
        out.append(_Mount(_unescape(fields[4]), (int(major), int(minor))))
    return out


def _mount_point_of(path: str, mounts: list[_Mount] | None) -> str:
    """The mount point of the file system that holds ``path`` (a real path)."""
    if mounts is not None:
        points = {m.point for m in mounts}
        probe = path
        while probe not in points and probe != "/":
            probe = os.path.dirname(probe)
        return probe
    probe = path
    while not os.path.ismount(probe):
        probe = os.path.dirname(probe)
    return probe


def _uses_fsfreeze(cmd: list[str]) -> bool:
    return any(os.path.basename(arg) == "fsfreeze" for arg in cmd)


def check_freeze(settings: Settings) -> None:
    """Refuses a ``freeze`` path that fsfreeze would turn into a freeze of something else.

    fsfreeze freezes the whole file system that holds the path it is given: a plain folder
    on the root file system froze all of ``/`` (and the backup reported success). So the
    path must be a mount point, and when the volume is a mounted block device, one of the
    device's own. Only checked when the freeze command is fsfreeze: another command (a
    guest agent's) may name a mount point that this machine does not have.
    """
    mount = settings.freeze
    if mount is None or not _uses_fsfreeze(settings.freeze_command):
        return
    real = os.path.realpath(mount)
    mounts = _mounts()
    if not os.path.isdir(real):
        what = "is not a folder" if os.path.exists(real) else "does not exist"
        raise ConfigError(
            f"freeze: {mount!r} {what}, so it is not a mount point",
            hint="set freeze to the mount point of the file system to freeze",
        )
    owner = _mount_point_of(real, mounts)
    mounted_at = _device_mount_points(settings.path, mounts)
    if owner != real:
        where = f"; the volume is mounted at {mounted_at[0]!r}" if mounted_at else ""
        raise ConfigError(
            f"freeze: {mount!r} is not a mount point: it is a folder on the file system "
            f"mounted at {owner!r}, and fsfreeze would freeze all of that file system",
            hint=f"set freeze to the mount point of the file system to freeze{where}",
        )
    if mounted_at and real not in mounted_at:
        raise ConfigError(
            f"freeze: {mount!r} is not where the volume {settings.path!r} is mounted "
            f"({', '.join(repr(p) for p in mounted_at)}): freezing it would not stop the "
            "writes to the volume",
            hint=f"set freeze to {mounted_at[0]!r}",
        )


def _device_mount_points(path: str, mounts: list[_Mount] | None) -> list[str]:
    """Where the block device ``path`` is mounted ([] for a file, or an unmounted one)."""
    try:
        st = os.stat(path)
    except OSError:
        return []  # opening it will say why
    if mounts is None or not stat.S_ISBLK(st.st_mode):
        return []
    device = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return [m.point for m in mounts if m.device == device]


@contextmanager
def _frozen(settings: Settings) -> Iterator[None]:
    """Freezes ``settings.freeze`` for the body; the thaw always runs once a freeze ran."""
    mount = settings.freeze
    if mount is None:
        yield
        return
    check_freeze(settings)
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
    if settings.freeze is None:
        mounted_at = _device_mount_points(path, _mounts())
        if mounted_at:
            # Allowed (a file system mounted read-only is fine), but said: under writes the
            # image mixes blocks from before and during the read.
            log.warning(
                "volume %s is mounted at %s and not frozen: blocks written while it is read "
                "make an inconsistent image; set freeze: %s, or back up a snapshot",
                path,
                mounted_at[0],
                mounted_at[0],
            )
    with _frozen(settings):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"cannot open volume {path!r}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                raise SourceError(f"volume {path!r} is neither a file nor a block device")
            device = stat.S_ISBLK(st.st_mode)
            if device:
                _read_direct(fd, path)
            reader = _VolumeReader(fd, _image_size(fd, st), settings.read_size, path, direct=device)
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
    """A large file or block device as one stream, holes skipped, devices read with direct I/O."""

    kind = "volume"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.name or os.path.basename(settings.path.rstrip("/")) or "volume"

    def content(self) -> StreamContent:
        """One stream: the file or device, read when it opens."""
        return StreamContent([Stream(self.name, lambda: _open_volume(self.settings))])

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        """Write the image back to a file (through a temporary file) or a block device; raises
        :class:`TargetError` for a target holding data unless ``replace``."""
        target = os.path.abspath(request.target or self.settings.path)
        size = files.size(self.name)
        try:
            st: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise TargetError(f"cannot look at restore target {target!r}: {exc.strerror}") from exc
        if st is not None and stat.S_ISBLK(st.st_mode):
            self._restore_device(files, target, size, request.replace)
            return
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise TargetError(f"restore target {target!r} is neither a file nor a device")
            if st.st_size > 0 and not request.replace:
                raise TargetError(
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
            try:
                if old is not None:
                    os.chmod(tmp, old.st_mode & 0o7777)
                    with suppress(PermissionError):
                        os.chown(tmp, old.st_uid, old.st_gid)
                os.replace(tmp, target)
            except OSError as exc:
                raise TargetError(f"cannot put {tmp!r} in place: {exc.strerror}") from exc
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _restore_device(self, files: SnapshotFiles, target: str, size: int, replace: bool) -> None:
        if not replace:
            # Whether a device holds data cannot be told without reading all of it.
            raise TargetError(
                f"restore target {target!r} is a block device; its contents would be overwritten",
                hint="make sure nothing uses it, then restore with --replace",
            )
        try:
            # O_EXCL: the kernel refuses a device that is mounted or otherwise held (EBUSY).
            fd = os.open(target, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise TargetError(
                    f"restore target {target!r} is in use (mounted, or held by another "
                    "program): writing under it would corrupt it",
                    hint="unmount it or stop what holds it, then restore again",
                ) from exc
            raise TargetError(f"cannot open device {target!r}: {exc.strerror}") from exc
        try:
            device_size = os.lseek(fd, 0, os.SEEK_END)
            if device_size < size:
                raise TargetError(
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
    """The source for a validated ``volume`` block (the registry's entry point)."""
    return VolumeSource(settings)
