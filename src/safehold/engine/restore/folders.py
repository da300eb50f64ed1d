"""Where restore creates things: every name relative to an open descriptor of its folder,
and never through a link.

A restore must write only inside its target, whatever the snapshot says and whatever is
already in the target or appears there while it runs (another user may own a folder of
the target; restore may run as root). Two things make that hold:

* names are single path components, unique in their folder: the tree decoder refuses
  anything else (``repository/tree.check_names``), so joining names never climbs out;
* nothing is looked up by a path through folders: the target is opened once, and every
  folder is created (``mkdirat``) and opened (``O_DIRECTORY | O_NOFOLLOW``) relative to
  its parent's descriptor; files, links, FIFOs and devices are created relative to their
  folder's descriptor (``O_NOFOLLOW``, ``*at`` calls with ``follow_symlinks=False``), and
  folders get their metadata through their own descriptors. A symlink met where a folder
  belongs is replaced by the folder, never followed; one put there later is never used,
  since a descriptor stays bound to the folder it was opened on (if that folder is moved
  away meanwhile, its files go with it, still inside the file system, never through the
  link).

Folders are kept open for the whole restore, so that a worker creates a file with one
``openat`` (the kernel then walks one component instead of the whole path, which is as
fast as the path-based open it replaced, or faster in deep trees). Descriptors are limited
(``RLIMIT_NOFILE``; often 1,024 unless raised, and the command line raises it): past
:func:`folder_budget` folders, those with the most files stay open and any other is
opened again when needed, component by component from its nearest kept ancestor, each
step with ``O_NOFOLLOW`` - slower, as safe. Kept descriptors are closed only after every
worker (thread or process) is done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
from collections.abc import Callable, Iterator

__all__ = [
    "Folder",
    "chmod_entry",
    "folder_budget",
    "make_folder",
    "make_writable",
    "open_folder",
    "raise_open_files_limit",
    "set_entry_meta",
    "set_folder_meta",
]

# (mode, uid, gid, mtime in ns), as in write.Meta
Meta = tuple[int, int, int, int]
# Sets an item's extended attributes, given its descriptor or a path to it, and whether
# to follow a symlink there (engine/xattrs.py, AttrSetter.set).
SetAttrs = Callable[[int | str, bool], None]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A folder restore may not read (an existing one, restoring as a user without its read
# bit) still serves as a directory descriptor when opened for its path only (Linux).
_O_PATH: int = getattr(os, "O_PATH", 0)
_DIR_PATH = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC if _O_PATH else 0
# Linux has no lchmod: a mode is set through an O_PATH descriptor's /proc link instead,
# which names the very inode opened (as glibc's fchmodat(AT_SYMLINK_NOFOLLOW) does).
_LCHMOD = os.chmod in os.supports_follow_symlinks

# At most this many folders kept open (each costs the kernel a few hundred bytes)...
MAX_KEPT = 65536
# ...and at most half of the descriptors the process may open, less this many, so that
# files being written, pipes and connections always find room.
_RESERVE = 64


class Folder:
    """A folder of the target as restore created or found it: ``fd`` is its descriptor
    while it is kept open, else -1 (then :meth:`open` gives one)."""

    __slots__ = ("fd", "name", "parent", "path")

    def __init__(self, path: str, name: str, parent: Folder | None, fd: int) -> None:
        self.path = path  # for messages only: nothing is ever opened by it
        self.name = name
        self.parent = parent
        self.fd = fd

    @classmethod
    def top(cls, path: str) -> Folder:
        """The folder at ``path`` (a restore's target, given by the user: links in it are
        followed as the user meant), kept open until :meth:`close`."""
        return cls(path, "", None, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def descriptor(self) -> Iterator[int]:
        """Its descriptor for a moment: the one kept open, or a new one (:meth:`open`, for
        a folder past the budget of open ones) closed afterwards."""
        if self.fd >= 0:
            yield self.fd
            return
        fd = self.open()
        try:
            yield fd
        finally:
            os.close(fd)

    def open(self) -> int:
        """A new descriptor of this folder, for the caller to close: opened one component
        at a time from the nearest folder kept open, each with ``O_NOFOLLOW``."""
        names: list[str] = []
        folder: Folder = self
        while folder.fd < 0:
            assert folder.parent is not None  # the target itself is always kept open
            names.append(folder.name)
            folder = folder.parent
        fd = os.dup(folder.fd) if not names else folder.fd
        owned = not names
        for name in reversed(names):
            try:
                sub = open_folder(name, fd)
            finally:
                if owned:
                    os.close(fd)
            fd, owned = sub, True
        return fd

    def close(self) -> None:
        """Close the folder's descriptor (once; later calls do nothing)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def open_folder(name: str, parent: int) -> int:
    """The folder ``name`` in ``parent``; ELOOP or ENOTDIR if it is a link or no folder."""
    try:
        return os.open(name, _DIR, dir_fd=parent)
    except PermissionError:
        if not _DIR_PATH:
            raise
        return os.open(name, _DIR_PATH, dir_fd=parent)


def make_folder(name: str, parent: int) -> tuple[int, bool]:
    """Create (or find) the folder ``name`` in ``parent`` and open it; returns its
    descriptor and whether it was created. A symlink in its place is replaced, never
    followed (it may point anywhere); anything else that is not a folder is an error."""
    try:
        os.mkdir(name, dir_fd=parent)
        created = True
    except FileExistsError:
        created = False
    try:
        return open_folder(name, parent), created
    except OSError as exc:
        if created or exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    if not stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
        raise FileExistsError(errno.EEXIST, "something that is not a folder is in the way")
    os.unlink(name, dir_fd=parent)
    os.mkdir(name, dir_fd=parent)
    return open_folder(name, parent), True


def set_folder_meta(fd: int, meta: Meta, owner: bool, *, attrs: SetAttrs | None = None) -> None:
    """Owner, extended attributes, mode and times of the folder open as ``fd`` (owner
    first: a change of owner clears set-id bits; the mode after an ACL, whose mask it
    sets again)."""
    try:
        _set_meta(fd, meta, owner, attrs)
    except OSError as exc:
        if exc.errno != errno.EBADF or not _O_PATH:
            raise
        # an O_PATH descriptor (open_folder)
        _set_meta(f"/proc/self/fd/{fd}", meta, owner, attrs)


def _set_meta(target: int | str, meta: Meta, owner: bool, attrs: SetAttrs | None) -> None:
    mode, uid, gid, mtime_ns = meta
    if owner:
        with contextlib.suppress(OSError):
            os.chown(target, uid, gid)
    if attrs is not None:
        attrs(target, True)
    os.chmod(target, mode)
    os.utime(target, ns=(mtime_ns, mtime_ns))


def set_entry_meta(
    parent: int,
    name: str,
    meta: Meta,
    owner: bool,
    *,
    is_link: bool,
    attrs: SetAttrs | None = None,
) -> None:
    """Owner, extended attributes, mode (not for a symlink) and times of the symlink, FIFO
    or device ``name`` in ``parent``, never following a link."""
    mode, uid, gid, mtime_ns = meta
    if owner:
        with contextlib.suppress(OSError):
            os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
    if attrs is not None:
        # No *xattr call takes a folder descriptor: the name is reached through the
        # folder's own /proc link, and a link there is the link itself (not followed).
        attrs(f"/proc/self/fd/{parent}/{name}", False)
    if not is_link:
        chmod_entry(parent, name, mode)
    os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)


def chmod_entry(parent: int, name: str, mode: int) -> None:
    """``chmod`` of ``name`` in ``parent`` itself: if it is a link (put there by someone
    else meanwhile), the link, which Linux refuses, never what it points to."""
    if _LCHMOD:
        os.chmod(name, mode, dir_fd=parent, follow_symlinks=False)
        return
    if not _O_PATH:  # neither lchmod nor O_PATH: no way not to follow (no such platform)
        os.chmod(name, mode, dir_fd=parent)
        return
    fd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def make_writable(fd: int) -> None:
    """Let this process create and replace things in the folder open as ``fd``, which it
    found (not created) in the target: a read-only folder of its own (of an earlier
    restore, say) gets its owner's write and search bits until it gets its saved mode, last.
    A folder of someone else's is left as it is (root writes in it anyway)."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o300 == 0o300:
        return
    mode = stat.S_IMODE(st.st_mode) | 0o700
    try:
        os.chmod(fd, mode)
    except OSError as exc:
        if exc.errno != errno.EBADF or not _O_PATH:
            raise
        os.chmod(f"/proc/self/fd/{fd}", mode)  # an O_PATH descriptor (open_folder)


def folder_budget() -> int:
    """How many folders a restore may keep open, given the process's descriptor limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_KEPT
    return max(0, min(MAX_KEPT, soft // 2 - _RESERVE))


def raise_open_files_limit() -> None:
    """Raise the soft limit on open descriptors towards the hard one, enough for
    :data:`MAX_KEPT` folders (a process-wide setting: for the command line to choose;
    library callers keep theirs and restore stays correct, only slower past the budget)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * (MAX_KEPT + _RESERVE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, want)
        if new > soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
