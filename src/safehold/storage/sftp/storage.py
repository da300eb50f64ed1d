"""The ``Storage`` Protocol over pooled SFTP sessions (see the package docstring).

Every call borrows a session and runs one function on it (:meth:`SftpStorage._call`); the
function may raise :class:`StatusError` (the server said no: the session goes back to the
pool) or fail below SFTP (the session is dropped); either is translated by
:func:`safehold.storage.sftp.errors.translate`.
"""

from __future__ import annotations

import os
import posixpath
import stat as stat_mode
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from paramiko.sftp import (
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
)

from safehold.errors import (
    ObjectExists,
    ObjectNotFound,
    SafeholdError,
    StorageError,
)
from safehold.model import ObjectInfo
from safehold.storage.base import check_name, clock_reading
from safehold.storage.common import check_range, short_read
from safehold.storage.sftp.client import Connector, Pool, Session
from safehold.storage.sftp.errors import BROKEN, Context, StatusError, translate
from safehold.storage.sftp.settings import SftpOptions, SftpTarget, parse_location

__all__ = ["TEMP_PREFIX", "SftpStorage", "from_location"]

T = TypeVar("T")
TEMP_PREFIX = ".tmp-"


class SftpStorage:
    """Objects as files below a folder of an SFTP server; see the package docstring."""

    def __init__(self, target: SftpTarget, opts: SftpOptions, *, create: bool = False) -> None:
        self._target = target
        self._opts = opts
        self._where = target.describe()
        self._root = target.path
        self._create = create
        self._context = Context(self._where, target.user, opts.timeout)
        self._pool = Pool(Connector(target, opts, self._where), opts.max_connections)

    def __repr__(self) -> str:
        return f"SftpStorage({self._where!r})"

    def describe(self) -> str:
        return self._where

    def close(self) -> None:
        self._pool.close()

    # --- calls -----------------------------------------------------------------------------------

    def _call(
        self, action: str, fn: Callable[[Session], T], *, missing_is_not_found: bool = True
    ) -> T:
        session = self._pool.acquire()
        healthy = False
        try:
            result = fn(session)
            healthy = True
            return result
        except StatusError as exc:
            healthy = True
            raise translate(
                exc, self._context, action, missing_is_not_found=missing_is_not_found
            ) from exc
        except SafeholdError:
            healthy = True
            raise
        except BROKEN as exc:
            raise translate(exc, self._context, action) from exc
        finally:
            self._pool.release(session, healthy=healthy)

    def _path(self, name: str) -> str:
        return f"{self._root}/{check_name(name)}"

    # --- put --------------------------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        final = self._path(name)
        folder, base = posixpath.split(final)
        if base.startswith(TEMP_PREFIX):
            raise ValueError(f"invalid object name {name!r}: {TEMP_PREFIX!r} names are reserved")
        view = memoryview(data).cast("B")

        def put(s: Session) -> None:
            tmp = f"{folder}/{TEMP_PREFIX}{uuid.uuid4().hex}"
            flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
            try:
                handle = s.open_handle(tmp, flags)
            except StatusError as exc:
                if exc.code != SFTP_NO_SUCH_FILE:
                    raise
                self._make_folders(s, folder)
                handle = s.open_handle(tmp, flags)
            try:
                try:
                    s.write_all(handle, view)
                except StatusError:
                    s.close_handle(handle)  # after a broken connection, this would hang too
                    raise
                s.fsync_and_close(handle)
                if exclusive:
                    try:
                        s.rename(tmp, final)  # SFTP RENAME refuses an existing target
                    except StatusError:
                        if self._is(s, final, stat_mode.S_ISREG):
                            raise ObjectExists(
                                f"{self._where}: object {name!r} already exists"
                            ) from None
                        raise
                else:
                    s.replace(tmp, final)
            except (StatusError, SafeholdError):
                # The session still works: do not leave the temporary file behind. (After a
                # broken connection it stays: hidden from list, and tiny next to a pack.)
                try:
                    s.remove(tmp)
                except StatusError:
                    pass
                raise

        self._call(f"write {name!r}", put, missing_is_not_found=False)

    def _is(self, s: Session, path: str, kind: Callable[[int], bool]) -> bool:
        try:
            mode = s.stat(path).st_mode
        except StatusError as exc:
            if exc.code == SFTP_NO_SUCH_FILE:
                return False
            raise
        return mode is not None and kind(mode)

    def _make_folders(self, s: Session, folder: str) -> None:
        """Create ``folder`` and its missing parents; the root only if ``create`` was given
        (otherwise a mistyped location would silently start a new repository)."""
        missing: list[str] = []
        path = folder
        while True:
            if path == self._root and not self._create:
                if not self._is(s, path, stat_mode.S_ISDIR):
                    raise StorageError(
                        f"{self._where}: the folder does not exist",
                        hint="check the path, or create the repository there first",
                    )
                break
            try:
                s.mkdir(path)
                break
            except StatusError as exc:
                parent = posixpath.dirname(path)
                if exc.code == SFTP_NO_SUCH_FILE and parent not in ("", "/", path):
                    missing.append(path)
                    path = parent
                    continue
                if not self._is(s, path, stat_mode.S_ISDIR):
                    raise
                break  # it exists: made by a concurrent put, or the parent we stopped at
        for path in reversed(missing):
            try:
                s.mkdir(path)
            except StatusError:
                if not self._is(s, path, stat_mode.S_ISDIR):
                    raise

    # --- get / stat / delete ----------------------------------------------------------------------

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        check_range(offset, length)

        def get(s: Session) -> bytes:
            handle = s.open_handle(path, SFTP_FLAG_READ)
            try:
                attrs = s.fstat(handle)
                if attrs.st_mode is None or not stat_mode.S_ISREG(attrs.st_mode):
                    raise ObjectNotFound(f"{self._where}: cannot read {name!r}: no such object")
                size = attrs.st_size or 0
                end = size if length is None else offset + length
                if end > size or offset > size:
                    raise short_read(self._where, name, size, offset, length)
                data = s.read_exactly(handle, offset, end - offset) if end > offset else b""
                if data is None:  # it shrank under us
                    raise short_read(self._where, name, size, offset, length)
            except (StatusError, SafeholdError):
                s.close_handle(handle)
                raise
            s.close_handle(handle)
            return data

        return self._call(f"read {name!r}", get)

    def stat(self, name: str) -> ObjectInfo:
        path = self._path(name)

        def stat(s: Session) -> ObjectInfo:
            attrs = s.stat(path)
            if attrs.st_mode is None or not stat_mode.S_ISREG(attrs.st_mode):
                raise ObjectNotFound(f"{self._where}: cannot stat {name!r}: no such object")
            return ObjectInfo(name, attrs.st_size or 0)

        return self._call(f"stat {name!r}", stat)

    def delete(self, name: str) -> None:
        path = self._path(name)

        def delete(s: Session) -> None:
            try:
                s.remove(path)
            except StatusError as exc:
                # Removing a folder fails with a generic failure: it is not an object.
                if exc.code != SFTP_NO_SUCH_FILE and not self._is(s, path, stat_mode.S_ISREG):
                    raise ObjectNotFound(
                        f"{self._where}: cannot delete {name!r}: no such object"
                    ) from None
                raise

        self._call(f"delete {name!r}", delete)

    # --- clock ---------------------------------------------------------------------------------

    def server_time(self) -> datetime | None:
        """The server's clock (storage.capabilities.ServerClock): the modification time the server
        gives a temporary file created now in the root (SFTP version 3 carries whole
        seconds), which is removed again. None if no file can be created there."""
        tmp = f"{self._root}/{TEMP_PREFIX}{uuid.uuid4().hex}"

        def stamp(s: Session) -> int | None:
            handle = s.open_handle(tmp, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL)
            try:
                mtime = s.fstat(handle).st_mtime
            finally:
                s.close_handle(handle)
                s.remove(tmp)
            return int(mtime) if mtime is not None else None

        started = time.monotonic()
        try:
            seconds = self._call("read the server's clock", stamp, missing_is_not_found=False)
        except SafeholdError:
            return None
        ended = time.monotonic()
        if seconds is None:
            return None
        found = datetime.fromtimestamp(seconds, UTC)
        return clock_reading(found, started, ended, resolution=1.0)

    # --- list ----------------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        folder = prefix.rpartition("/")[0]
        if folder:
            try:
                check_name(folder)
            except ValueError:
                return iter(())  # no valid name starts with this prefix

        def walk(s: Session) -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            start = f"{self._root}/{folder}" if folder else self._root
            stack = [(start, f"{folder}/" if folder else "")]
            while stack:
                path, rel = stack.pop()
                try:
                    entries = s.listdir_attr(path)
                except StatusError as exc:
                    if exc.code == SFTP_NO_SUCH_FILE:
                        continue  # no such folder (yet): nothing to list
                    raise
                for entry in entries:
                    entry_name, mode = f"{rel}{entry.filename}", entry.st_mode or 0
                    if stat_mode.S_ISDIR(mode):
                        if entry_name.startswith(prefix) or prefix.startswith(f"{entry_name}/"):
                            stack.append((f"{path}/{entry.filename}", f"{entry_name}/"))
                    elif (
                        stat_mode.S_ISREG(mode)
                        and not entry.filename.startswith(TEMP_PREFIX)
                        and entry_name.startswith(prefix)
                    ):
                        found.append(ObjectInfo(entry_name, entry.st_size or 0))
            return found

        # Materialised while the session is held: a caller may interleave other calls.
        return iter(self._call(f"list {prefix or '/'}", walk))


def from_location(
    rest: str, *, create: bool, options: Mapping[str, object] | None = None
) -> SftpStorage:
    """Open ``sftp:REST``; options come from ``options``, then ``SAFEHOLD_SFTP_*``."""
    return SftpStorage(parse_location(rest), SftpOptions.parse(options, os.environ), create=create)
