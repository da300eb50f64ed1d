"""A folder on a local (or mounted) filesystem as storage.

An object named ``a/b/c`` is the file ``ROOT/a/b/c``. Folders are created on demand and
never removed, so a folder and an object cannot share a name (``a`` and ``a/b`` cannot both
be objects); the repository format never needs that.

**Atomic, durable put.** Data goes to a temporary file in the destination folder (its name
starts with ``.tmp-``, which :meth:`LocalStorage.list` never shows), is fsynced, then renamed
over the final name, and the folder is fsynced so the rename itself survives a power cut.
Objects of ``DIRECT_MIN`` bytes or more (packs) are written with direct I/O
(:mod:`safehold.direct_io`), past the page cache, on file systems that suit it.
A crash can leave a temporary file behind but never a partial object;
:meth:`LocalStorage.remove_stale_temp_files` cleans such leftovers. Object names whose last
part starts with ``.tmp-`` are therefore reserved.

**Exclusive create** hard-links the finished temporary file to the final name: ``link`` fails
with ``EEXIST`` atomically if the name is taken, so two writers can never both win (a
check-then-rename would race). Hard links work on every POSIX filesystem safehold supports.

**Clock.** ``server_time`` is the modification time of a one-byte temporary file written
and fsynced in the root: the time of whoever stamps files there, which on NFS or SMB is
the file server (it sets the time of a write it applies), and otherwise this machine.

**Errors.** Every ``OSError`` is translated once, by
:func:`safehold.storage.local.errors.translate_os_error`, into the
:mod:`safehold.errors` hierarchy, keeping the original as ``__cause__``.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mode
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from safehold.direct_io import DirectWrites, suits_direct_io, write_all
from safehold.errors import ObjectExists, ObjectNotFound, StorageError
from safehold.model import ObjectInfo
from safehold.storage.base import check_name, clock_reading
from safehold.storage.common import check_range, short_read
from safehold.storage.local.errors import MISSING, translate_os_error
from safehold.storage.local.settings import parse_location

__all__ = ["DIRECT_MIN", "TEMP_PREFIX", "LocalStorage", "from_location"]

TEMP_PREFIX = ".tmp-"
# Objects this large go to disk with direct writes: packs, not the small metadata objects
# (keys, snapshots, locks, most index files), where the extra system calls would cost more
# than the copy they save.
DIRECT_MIN = 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (certain FUSE and network mounts) cannot fsync a folder; their
        # renames are as durable as they will ever be, so this is not an error.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


class LocalStorage:
    """Objects as files under ``root``. See the module docstring for the guarantees."""

    read_span = 1024 * 1024  # see storage.capabilities.ReadSpan
    fork_safe = True  # storage.capabilities.ForkSafe: files opened per call, nothing shared

    def __init__(self, root: str | Path, *, create: bool = False) -> None:
        self._root = Path(os.path.abspath(Path(root).expanduser()))
        self._where = f"local:{self._root}"
        self._direct: DirectWrites | None = None  # decided at the first large put
        if create:
            try:
                self._root.mkdir(parents=True, exist_ok=True)
                _fsync_dir(self._root.parent)
            except OSError as exc:
                raise translate_os_error(
                    exc, where=self._where, action="create the folder", missing_is_not_found=False
                ) from exc

    @property
    def root(self) -> Path:
        return self._root

    def describe(self) -> str:
        return self._where

    def close(self) -> None:
        pass

    def _path(self, name: str) -> Path:
        return self._root.joinpath(*check_name(name).split("/"))

    def _error(
        self, exc: OSError, action: str, *, missing_is_not_found: bool = True
    ) -> StorageError:
        return translate_os_error(
            exc, where=self._where, action=action, missing_is_not_found=missing_is_not_found
        )

    # --- put ------------------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        final = self._path(name)
        if final.name.startswith(TEMP_PREFIX):
            raise ValueError(f"invalid object name {name!r}: {TEMP_PREFIX!r} names are reserved")
        folder = final.parent
        tmp: str | None = None
        try:
            self._make_folders(folder)
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
            try:
                if len(data) >= DIRECT_MIN:
                    if self._direct is None:
                        self._direct = DirectWrites(suits_direct_io(folder))
                    self._direct.write(fd, data, 0)
                else:
                    write_all(fd, data, 0)
                os.fsync(fd)  # the tail written through the page cache, and the metadata
            finally:
                os.close(fd)
            if exclusive:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    raise ObjectExists(f"{self._where}: object {name!r} already exists") from None
            else:
                os.replace(tmp, final)
                tmp = None  # renamed away: the name may already belong to another writer
            _fsync_dir(folder)
        except OSError as exc:
            raise self._error(exc, f"write {name!r}", missing_is_not_found=False) from exc
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass  # a leftover is harmless: hidden from list, cleaned by the sweeper

    def _make_folders(self, folder: Path) -> None:
        missing: list[Path] = []
        while folder != self._root and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        if not self._root.is_dir():
            # Creating the root here would silently start a repository at a mistyped path;
            # only an explicit create=True (repository init) may do that.
            raise StorageError(
                f"{self._where}: the folder does not exist",
                hint="check the path, or create the repository there first",
            )
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                pass  # a concurrent put made it; if it is a file, mkstemp reports ENOTDIR
            # The new folder's entry lives in its parent: make it durable before the object.
            _fsync_dir(path.parent)

    # --- get / stat -------------------------------------------------------------------------

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        check_range(offset, length)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                end = size if length is None else offset + length
                if end > size or offset > size:
                    raise short_read(self._where, name, size, offset, length)
                if offset:
                    f.seek(offset)
                data = f.read(end - offset)
        except OSError as exc:
            raise self._error(exc, f"read {name!r}") from exc
        if len(data) != end - offset:
            # The file shrank under us (it is being replaced by a non-atomic writer?).
            raise short_read(self._where, name, offset + len(data), offset, length)
        return data

    def get_into(self, name: str, offset: int, out: memoryview) -> None:
        """``get`` into the caller's buffer (see ``storage.capabilities.read_into``)."""
        path = self._path(name)
        check_range(offset, len(out))
        got = 0
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                if offset + len(out) > size:
                    raise short_read(self._where, name, size, offset, len(out))
                while got < len(out):
                    n = os.preadv(fd, [out[got:]], offset + got)
                    if not n:
                        break
                    got += n
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._error(exc, f"read {name!r}") from exc
        if got != len(out):
            raise short_read(self._where, name, offset + got, offset, len(out))

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise self._error(exc, f"stat {name!r}") from exc
        if not stat_mode.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"{self._where}: cannot stat {name!r}: no such object")
        return ObjectInfo(name, st.st_size)

    # --- list -----------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        folder, _, _ = prefix.rpartition("/")
        if folder:
            try:
                check_name(folder)
            except ValueError:
                return  # no valid name starts with this prefix
        start = self._root.joinpath(*folder.split("/")) if folder else self._root
        stack = [(start, f"{folder}/" if folder else "")]
        while stack:
            path, rel = stack.pop()
            try:
                entries = list(os.scandir(path))
            except OSError as exc:
                if exc.errno in MISSING:
                    continue  # no such folder (yet, or removed by hand): nothing to list
                raise self._error(exc, f"list {rel or '/'}") from exc
            for entry in entries:
                entry_name = f"{rel}{entry.name}"
                try:
                    if entry.is_dir(follow_symlinks=False):
                        # Below the prefix's folder only the first level needs filtering.
                        if entry_name.startswith(prefix) or prefix.startswith(f"{entry_name}/"):
                            stack.append((Path(entry.path), f"{entry_name}/"))
                    elif (
                        entry.is_file(follow_symlinks=False)
                        and not entry.name.startswith(TEMP_PREFIX)
                        and entry_name.startswith(prefix)
                    ):
                        size = entry.stat(follow_symlinks=False).st_size
                        yield ObjectInfo(entry_name, size)
                except OSError as exc:
                    if exc.errno in MISSING:
                        continue  # deleted while we listed: a listing is not a snapshot
                    raise self._error(exc, f"list {entry_name!r}") from exc

    # --- delete ---------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            os.unlink(path)
        except OSError as exc:
            raise self._error(exc, f"delete {name!r}") from exc
        # No folder fsync: a delete lost in a crash only leaves garbage for the next prune.

    # --- clock ----------------------------------------------------------------------------

    def server_time(self) -> datetime | None:
        """The file system's time (see the module docstring; storage.capabilities.ServerClock), or
        None if no file can be written in the root (a read-only mount)."""
        started = time.monotonic()
        try:
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self._root)
        except OSError:
            return None
        try:
            # A write, not only a create: an NFS client may stamp an exclusive create
            # itself, while the time of a write that reaches the server is the server's.
            os.write(fd, b"\0")
            os.fsync(fd)
            stamp_ns = os.fstat(fd).st_mtime_ns
        except OSError:
            return None
        finally:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass  # hidden from list and removed by remove_stale_temp_files
        ended = time.monotonic()
        stamp = datetime.fromtimestamp(stamp_ns / 1e9, UTC)
        return clock_reading(stamp, started, ended)

    # --- maintenance ----------------------------------------------------------------------

    def remove_stale_temp_files(self, older_than_seconds: float) -> int:
        """Delete ``.tmp-`` files left by crashed writers; return how many were removed.

        Only files older than ``older_than_seconds`` go, so a put still in progress in
        another process keeps its temporary file.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        try:
            for dirpath, _dirs, files in os.walk(self._root, onerror=_raise):
                for file_name in files:
                    if not file_name.startswith(TEMP_PREFIX):
                        continue
                    path = os.path.join(dirpath, file_name)
                    try:
                        if os.stat(path, follow_symlinks=False).st_mtime <= cutoff:
                            os.unlink(path)
                            removed += 1
                    except FileNotFoundError:
                        pass  # its writer finished or another sweeper got there first
        except OSError as exc:
            if exc.errno in MISSING:
                return removed
            raise self._error(exc, "remove stale temporary files") from exc
        return removed


def _raise(exc: OSError) -> None:
    raise exc


def from_location(
    rest: str, *, create: bool, options: Mapping[str, object] | None = None
) -> LocalStorage:
    """Open ``local:rest`` (or a plain path); ``create`` lets the root folder be made."""
    return LocalStorage(parse_location(rest, options), create=create)
