"""Writing restored files: creating them, placing blobs, and their metadata.

A restored file is created by its name relative to its folder's descriptor
(:mod:`safehold.engine.restore.folders`: no path through folders is ever looked up), and
exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``), which also refuses to follow a symlink
planted at its name; only when something is already there does restore look at it,
replace what is not a regular file, and truncate what is (or replace it, when it may not
be opened for writing: a read-only file of an earlier restore). A new file is created
with its permission bits and its owner's write bit, so that when the umask keeps them all,
the saved mode has that bit and the file's user and group are the process's (the planner
tells), it needs no ``fchmod`` or ``fchown``: two system calls less for each of tens of
thousands of small files. The write bit is there because a file may be opened again to
be written (by worker processes, engine/restore/workers.py): a read-only file created with
its final mode could then be written only by root with ``CAP_DAC_OVERRIDE``. Data goes in
with ``pwrite`` at the blob's offset, so blobs of one file may arrive in any order from
any worker. Once its last blob is written a file gets owner, extended attributes, mode and
times through its open descriptor (no path lookups), in that order (engine/xattrs.py says
why), and is closed.

A file of one blob is written by the one worker that opened the blob, start to finish,
without a lock; a file of several blobs is shared between workers and locked.

Large blobs go to disk with direct I/O (``O_DIRECT``, switched on around each write with
``fcntl``; see :mod:`safehold.direct_io`): copying gigabytes into the page cache was
half of a restore's CPU time (on a virtual machine, where every fresh page-cache page is
expensive); with direct writes the data is also on disk when restore returns instead of
dirty in memory. A file system that refuses direct I/O (``EINVAL``) turns it off for the
rest of the restore; ``direct=False`` (``restore --buffered``) never tries.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from typing import Any

from safehold.direct_io import ALIGN, DirectWrites, write_all
from safehold.engine.restore.folders import Folder
from safehold.engine.xattrs import AttrSetter
from safehold.errors import TargetError

# (mode, uid, gid, mtime in ns)
Meta = tuple[int, int, int, int]

SPARSE_BLOCK = 64 * 1024
_ZEROS = bytes(SPARSE_BLOCK)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REPLACE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC  # a file restore created before


class OpenFile:
    """A regular file being restored."""

    __slots__ = (
        "created",
        "fd",
        "folder",
        "lock",
        "meta",
        "name",
        "owned",
        "remaining",
        "size",
        "sparse",
        "truncate",
        "xattrs",
    )

    def __init__(
        self, folder: Folder, name: str, meta: Meta, size: int, blobs: int, sparse: bool
    ) -> None:
        self.folder = folder
        self.name = name  # one path component (tree.check_names), created in ``folder``
        self.meta = meta
        self.size = size
        self.remaining = blobs
        self.sparse = sparse
        # Extend to ``size`` right after opening (see the planner for when it is needed).
        self.truncate = sparse
        self.fd = -1
        self.lock: threading.Lock | None = None
        # Whether a file this process creates gets the user and group of ``meta``.
        self.owned = False
        self.created = False  # created by this restore (not an existing file truncated)
        self.xattrs: Any = None  # the node's ``xattrs`` field, if it has one

    @property
    def path(self) -> str:
        """For messages only: nothing is ever opened by it. Made when asked, not kept: a
        path string per file was 3-4 MiB of a benchmark restore's peak (twice, counting the
        worker processes' copies)."""
        return os.path.join(self.folder.path, self.name)

    def make_shared(self) -> None:
        """Several blobs, possibly written by several workers."""
        self.lock = threading.Lock()


# Where one blob goes: (file, offset in the file), once per occurrence.
BlobTargets = list[tuple[OpenFile, int]]


def target_error(path: str, exc: OSError) -> TargetError:
    """The :class:`TargetError` for a failed write of ``path``: a full disk says so."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TargetError(
            f"the restore target is full while writing {path}",
            hint="free space or restore to another --target; the repository is unchanged",
        )
    return TargetError(f"cannot write {path}: {exc.strerror}", hint="check the --target folder")


def current_umask() -> int | None:
    """The process's umask, read without changing it (``os.umask`` sets it, for every
    thread); None where the kernel does not tell (before Linux 4.7, not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def write_sparse(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write only the blocks that are not all zero: the file was extended with ftruncate,
    so skipped blocks stay holes."""
    view = memoryview(data)
    for start in range(0, len(view), SPARSE_BLOCK):
        block = view[start : start + SPARSE_BLOCK]
        if block != _ZEROS[: len(block)]:
            write_all(fd, block, offset + start)


# Direct writes for blobs that hold at least DIRECT_MIN bytes of whole blocks wherever they
# start, i.e. of DIRECT_MIN + DIRECT_ALIGN bytes or more (below that the extra system calls
# cost more than the copy they save).
DIRECT_ALIGN = ALIGN
DIRECT_MIN = 64 * 1024


class FileWriter:
    """Creates, fills and finishes restored files; thread-safe per :class:`OpenFile`."""

    def __init__(
        self, *, owner: bool, overwrite: bool, direct: bool = True, attrs: AttrSetter | None = None
    ) -> None:
        self.owner = owner
        self.overwrite = overwrite
        self.attrs = attrs  # sets extended attributes (None: none are)
        # In a restore worker process: files of several blobs exist already and are
        # finished by the parent (engine/restore/workers.py); only their blobs are written.
        self.shared = False
        self._direct = DirectWrites(direct)
        umask = current_umask()
        # Modes that a new file gets exactly from ``open``: no bits the umask takes away,
        # and none of set-user-id, set-group-id and sticky (which a change of owner clears).
        self._exact = 0o7777 & ~(0o7000 | umask) if umask is not None else 0

    @property
    def direct(self) -> bool:
        """Whether large blobs still go to disk directly (off once the target refused)."""
        return self._direct.enabled

    def put(
        self, f: OpenFile, data: bytes | memoryview, offset: int, *, aligned: bool = False
    ) -> int:
        """Write one blob of ``f``; returns 1 if that finished the file, else 0.
        ``aligned``: ``data`` sits where a direct write can take it as it is
        (:meth:`DirectWrites.write_aligned`)."""
        lock = f.lock
        if lock is None:  # the file's only blob
            fd = self._open(f)
            try:
                self._write(f, fd, data, offset, aligned)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            self._finish(f, fd)
            return 1
        if self.shared:
            fd = self._reopen(f)
            try:
                self._write(f, fd, data, offset, aligned)
            finally:
                os.close(fd)
            return 0
        with lock:
            if f.fd < 0:
                f.fd = self._open(f)
            self._write(f, f.fd, data, offset, aligned)
            f.remaining -= 1
            if f.remaining:
                return 0
            fd, f.fd = f.fd, -1
            self._finish(f, fd)
            return 1

    def write_empty(self, f: OpenFile) -> None:
        """Create ``f`` with no content and give it its metadata."""
        self._finish(f, self._open(f))

    def create(self, f: OpenFile) -> None:
        """Create (or truncate) ``f`` for restore worker processes to write into."""
        os.close(self._open(f))

    def finish_created(self, f: OpenFile) -> int:
        """Finish a file made by :meth:`create` once all its blobs are written; returns 1."""
        self._finish(f, self._reopen(f))
        return 1

    def _reopen(self, f: OpenFile) -> int:
        """Open ``f``, made by :meth:`create`, for writing (never creating or following)."""
        try:
            d = f.folder.fd
            if d >= 0:
                return os.open(f.name, _WRITE, dir_fd=d)
            d = f.folder.open()  # a folder past the budget of kept ones
            try:
                return os.open(f.name, _WRITE, dir_fd=d)
            finally:
                os.close(d)
        except OSError as exc:
            raise target_error(f.path, exc) from exc

    def abandon(self, f: OpenFile) -> None:
        """Close ``f`` if it is open (after a failure elsewhere)."""
        if f.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(f.fd)
            f.fd = -1

    def _open(self, f: OpenFile) -> int:
        try:
            d = f.folder.fd
            if d >= 0:
                fd = self._create(f, d)
            else:
                d = f.folder.open()  # a folder past the budget of kept ones
                try:
                    fd = self._create(f, d)
                finally:
                    os.close(d)
            if f.truncate and f.size:
                try:
                    os.ftruncate(fd, f.size)  # holes stay holes for sparse files
                except BaseException:
                    os.close(fd)
                    raise
        except OSError as exc:
            raise target_error(f.path, exc) from exc
        return fd

    def _create(self, f: OpenFile, folder: int) -> int:
        # Writable by its owner until _finish sets the saved mode (see the module's doc).
        mode = f.meta[0] & 0o777 | stat.S_IWUSR
        try:
            fd = os.open(f.name, _CREATE, mode, dir_fd=folder)
            f.created = True
            return fd
        except FileExistsError:
            pass
        name = f.name
        if self.overwrite:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    os.unlink(name, dir_fd=folder)
        try:
            return os.open(name, _REPLACE, 0o600, dir_fd=folder)
        except PermissionError:
            if not self.overwrite:
                raise
        # A file this user may not write (read-only, or not its own) but, the folder being
        # writable, may replace, as GNU tar replaces what it extracts over.
        os.unlink(name, dir_fd=folder)
        fd = os.open(name, _CREATE, mode, dir_fd=folder)
        f.created = True
        return fd

    def _write(
        self, f: OpenFile, fd: int, data: bytes | memoryview, offset: int, aligned: bool
    ) -> None:
        try:
            if f.sparse:
                write_sparse(fd, data, offset)
            elif self._direct.enabled and len(data) >= DIRECT_MIN + DIRECT_ALIGN:
                if aligned and isinstance(data, memoryview):
                    self._direct.write_aligned(fd, data, offset)
                else:
                    self._direct.write(fd, data, offset)
            else:
                write_all(fd, data, offset)
        except OSError as exc:
            raise target_error(f.path, exc) from exc

    def _finish(self, f: OpenFile, fd: int) -> None:
        """Owner, extended attributes, mode and times through the descriptor, then close
        it. The times are set after the last write (a write changes them); the owner
        first, since a change of owner clears the set-id bits and file capabilities; the
        mode after an ACL, whose mask it sets again."""
        mode, uid, gid, mtime_ns = f.meta
        try:
            try:
                if self.owner and not (f.created and f.owned):
                    with contextlib.suppress(OSError):
                        os.fchown(fd, uid, gid)
                exact = f.created and mode & ~self._exact == 0 and mode & stat.S_IWUSR
                if f.xattrs is not None and self.attrs is not None:
                    self.attrs.set(fd, f.xattrs, f.path)
                    exact = False  # (an ACL set the group bits: its mask)
                if not exact:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
        except OSError as exc:
            raise target_error(f.path, exc) from exc
