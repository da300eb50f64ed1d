"""The SQLite source: an online, consistent copy through SQLite's backup API.

Applications keep writing while the copy is taken. How consistency is had depends on the
database's journal mode:

* **WAL**: the copy runs inside one read transaction, stepped ``pages_per_step`` pages at
  a time. The transaction pins a snapshot, so the copy never restarts, and in WAL mode a
  reader blocks no writer (only checkpoints wait, so the ``-wal`` file grows meanwhile).
* **rollback journal** (``delete``, ``truncate``, ``persist``...): a reader's lock would
  stop every commit, so the copy is stepped *without* holding one between steps; SQLite
  restarts it whenever another connection commits. Under a busy writer that could go on
  forever, so after ``max_restarts`` restarts the rest is copied in one step holding the
  read lock: writers wait (up to their busy timeout) for as long as copying the database
  into memory takes, typically well under a second per 100 MiB.

Where the copy goes is the one trade-off. The backup API writes into a database
connection, not a pipe, so the copy cannot stream straight from SQLite to the chunker:

* up to ``memory_limit`` (128 MiB by default) it goes into an in-memory database,
  serialized to bytes (briefly up to three times the database's size in memory);
* above it, into a file in a private folder under ``temp_dir`` (the system's temporary
  folder by default): the one place a source writes a temporary copy to disk. The file is
  unlinked as soon as it is opened for reading, so nothing is left behind even on a crash
  in the middle of the upload. ``VACUUM INTO`` would not help: it too writes a file, and
  holds its read transaction (blocking rollback-mode writers) for the whole copy.

Restoring writes the file next to the target, checks it with ``PRAGMA integrity_check``
and only then renames it into place, removing a replaced database's stale ``-wal`` and
``-shm`` files (SQLite would otherwise apply the old log to the new database). A target
that is refused (it exists and ``replace`` was not given, or it is not a regular file) or
cannot be written is a :class:`~safehold.errors.TargetError` (exit 7), as for every source.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from typing import BinaryIO

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator

from safehold.errors import IntegrityError, SourceError, TargetError
from safehold.sources.base import RestoreRequest, SnapshotFiles, Stream, StreamContent

__all__ = ["Settings", "SqliteSource", "build"]

log = logging.getLogger(__name__)

_COPY = 1 << 20
_STEP_SLEEP = 0.005  # seconds to wait after a step that found the database locked


class Settings(BaseModel):
    """``type: sqlite`` — one database file."""

    model_config = ConfigDict(extra="forbid")

    path: str
    # The file name of the copy at the snapshot's root (default: the database's name).
    name: str | None = None
    memory_limit: ByteSize = Field(default=ByteSize(128 << 20), ge=0)
    temp_dir: str | None = None
    pages_per_step: int = Field(default=1024, ge=1)
    max_restarts: int = Field(default=3, ge=0)
    busy_timeout: float = Field(default=30.0, gt=0)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        if name is not None and (not name or "/" in name or name in {".", ".."}):
            raise ValueError("must be a plain file name (no '/'), e.g. 'app.db'")
        return name


class _TooManyRestarts(Exception):
    pass


class _RestartWatch:
    """The backup's progress callback: counts restarts, gives up after ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.restarts = 0
        self._last: int | None = None

    def __call__(self, status: int, remaining: int, total: int) -> None:
        # A step that got its lock (not BUSY/LOCKED) but left as many pages to copy or
        # more: another connection committed and SQLite started over from page one.
        if status == sqlite3.SQLITE_OK and self._last is not None and remaining >= self._last:
            self.restarts += 1
            if self.restarts > self.limit:
                raise _TooManyRestarts
        self._last = remaining


def _open_source(path: str, timeout: float) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise SourceError(
            f"SQLite database {path!r} does not exist or is not a file",
            hint="check the source's path",
        )
    # mode=rw, not create: a missing database is an error, never a new empty one. Not ro
    # when the file is writable: a read-only connection cannot remove the -wal/-shm files
    # it creates when it is the last to close, and cannot roll back a crashed writer's
    # journal. Only SQLite's own housekeeping ever writes through this connection.
    mode = "rw" if os.access(path, os.W_OK) else "ro"
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=" + mode
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        conn.execute("PRAGMA schema_version").fetchone()  # fails early on a non-database
    except sqlite3.Error as exc:
        raise SourceError(f"cannot read SQLite database {path!r}: {exc}") from exc
    return conn


def _pragma(conn: sqlite3.Connection, name: str) -> str:
    row = conn.execute(f"PRAGMA {name}").fetchone()
    return str(row[0])


class _Copier:
    """Copies one source connection into destination connections, as the mode allows."""

    def __init__(self, src: sqlite3.Connection, settings: Settings) -> None:
        self.src = src
        self.settings = settings
        self.wal = _pragma(src, "journal_mode").lower() == "wal"
        self.page_size = int(_pragma(src, "page_size"))
        self.size = int(_pragma(src, "page_count")) * self.page_size
        self.restarts = 0

    def copy(self, open_dst: Callable[[], sqlite3.Connection]) -> sqlite3.Connection:
        """Copies into a destination from ``open_dst``; returns the one holding the copy."""
        dst = self._fresh(open_dst)
        pages = self.settings.pages_per_step
        if self.wal:
            self.src.execute("BEGIN")
            try:
                self.src.execute("SELECT count(*) FROM sqlite_master").fetchone()
                self.src.backup(dst, pages=pages, sleep=_STEP_SLEEP)
            finally:
                self.src.execute("COMMIT")
            return dst
        watch = _RestartWatch(self.settings.max_restarts)
        try:
            self.src.backup(dst, pages=pages, progress=watch, sleep=_STEP_SLEEP)
            return dst
        except _TooManyRestarts:
            dst.close()  # half written: an aborted backup leaves no usable database
        finally:
            self.restarts = watch.restarts
        log.info(
            "SQLite backup restarted %d times under concurrent writes; copying it in one "
            "step (writers wait meanwhile)",
            self.restarts,
        )
        dst = self._fresh(open_dst)
        self.src.backup(dst, pages=-1, sleep=_STEP_SLEEP)
        return dst

    def _fresh(self, open_dst: Callable[[], sqlite3.Connection]) -> sqlite3.Connection:
        dst = open_dst()
        # An in-memory destination refuses a source of another page size.
        dst.execute(f"PRAGMA page_size={self.page_size}")
        return dst


@contextmanager
def _consistent_copy(settings: Settings) -> Iterator[BinaryIO]:
    """Yields a reader of a consistent copy of the database (see the module docstring)."""
    path = settings.path
    try:
        with closing(_open_source(path, settings.busy_timeout)) as src:
            copier = _Copier(src, settings)
            if copier.size <= settings.memory_limit:
                with closing(copier.copy(_memory_db)) as mem:
                    data = mem.serialize()
                reader: BinaryIO = io.BytesIO(data)  # shares `data`, no copy
            else:
                reader = _copy_to_private_file(copier, settings.temp_dir)
    except sqlite3.Error as exc:
        raise SourceError(f"backup of SQLite database {path!r} failed: {exc}") from exc
    with reader:
        yield reader


def _memory_db() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", isolation_level=None)


def _copy_to_private_file(copier: _Copier, temp_dir: str | None) -> BinaryIO:
    folder = tempfile.mkdtemp(prefix="safehold-sqlite-", dir=temp_dir)  # mode 0700
    path = os.path.join(folder, "copy.db")

    def scratch() -> sqlite3.Connection:
        with suppress(FileNotFoundError):
            os.unlink(path)
        dst = sqlite3.connect(path, isolation_level=None)
        # A scratch file: no journal, no fsync; a crash just loses the scratch.
        dst.execute("PRAGMA journal_mode=OFF")
        dst.execute("PRAGMA synchronous=OFF")
        return dst

    try:
        copier.copy(scratch).close()
        reader = open(path, "rb")  # noqa: SIM115 - returned open, closed by the caller
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the open file stays readable
    return reader


# --- restore -------------------------------------------------------------------------------


def _check_integrity(path: str) -> None:
    # immutable=1: no locks, no -wal/-shm files created next to the unplaced copy.
    uri = "file:" + urllib.parse.quote(path) + "?mode=ro&immutable=1"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(20)")]
    except sqlite3.Error as exc:
        rows = [str(exc)]
    if rows != ["ok"]:
        raise IntegrityError(
            f"the restored SQLite database fails its integrity check: {'; '.join(rows[:5])}",
            hint="it was not put in place; try an older snapshot",
        )


def _write_copy(files: SnapshotFiles, name: str, fd: int) -> None:
    with os.fdopen(fd, "wb") as out, files.open(name) as src:
        shutil.copyfileobj(src, out, _COPY)
        out.flush()
        os.fsync(out.fileno())


class SqliteSource:
    """A consistent online copy of one SQLite database as a single stream."""

    kind = "sqlite"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.name or os.path.basename(settings.path.rstrip("/")) or "database"

    def content(self) -> StreamContent:
        """One stream: a consistent copy of the database, taken when it opens."""
        return StreamContent([Stream(self.name, lambda: _consistent_copy(self.settings))])

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        """Write the database to the target (or its own path) through a temporary file renamed
        over it; raises :class:`TargetError` for an existing file unless ``replace``."""
        target = os.path.abspath(request.target or self.settings.path)
        old = None
        if os.path.lexists(target):
            if not os.path.isfile(target) or os.path.islink(target):
                raise TargetError(f"restore target {target!r} exists and is not a regular file")
            if not request.replace:
                raise TargetError(
                    f"restore target {target!r} already exists",
                    hint="stop the applications using it, then restore with --replace, "
                    "or restore to another path",
                )
            try:
                old = os.stat(target)
            except OSError as exc:
                raise TargetError(f"cannot look at {target!r}: {exc.strerror}") from exc
        folder = os.path.dirname(target)
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(target)}.", suffix=".restoring", dir=folder
            )
        except OSError as exc:
            raise TargetError(f"cannot write in {folder!r}: {exc.strerror}") from exc
        try:
            try:
                _write_copy(files, self.name, fd)
            except OSError as exc:
                raise TargetError(f"writing {tmp!r} failed: {exc.strerror}") from exc
            _check_integrity(tmp)
            try:
                if old is not None:
                    os.chmod(tmp, old.st_mode & 0o7777)
                    with suppress(PermissionError):
                        os.chown(tmp, old.st_uid, old.st_gid)
                # The replaced database's log belongs to it: left in place, SQLite would
                # replay it over the restored file.
                for suffix in ("-wal", "-shm", "-journal"):
                    with suppress(FileNotFoundError):
                        os.unlink(target + suffix)
                os.replace(tmp, target)
            except OSError as exc:
                raise TargetError(f"cannot put {tmp!r} in place: {exc.strerror}") from exc
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        try:
            _fsync_dir(folder)
        except OSError as exc:
            raise TargetError(f"cannot sync {folder!r}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"SqliteSource(path={self.settings.path!r})"


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build(settings: Settings) -> SqliteSource:
    """The source for a validated ``sqlite`` block (the registry's entry point)."""
    return SqliteSource(settings)
