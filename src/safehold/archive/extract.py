"""Extracting a tar stream into a folder as GNU tar does, and never outside it.

``safehold archive restore`` must give back what the archive holds, as ``tar -x`` gives
it back (docs/storage/archive.md): Python's ``tarfile`` filters either refuse what a backup
is made of (absolute symlinks, devices, FIFOs) or change it (modes, owners). Here:

* as root, owners (by name where the name exists on this machine, else by id, as GNU tar
  does), modes with the set-id and sticky bits, times to the nanosecond (the pax record),
  symlinks (their targets are data: absolute ones too), hard links, FIFOs and devices;
* as another user, what GNU tar gives that user: the files are the user's, modes are the
  archive's permission bits less the umask, without set-id or sticky bits (a set-user-id
  program must not become one of the user who extracts it); devices cannot be made and
  are reported, not restored.

Nothing is written outside the target. The member list is checked in full before anything
is written (:func:`check_members`, a first pass over the stream): a member name that is
absolute or has a ``..`` component, a member below a symlink the archive made (``x ->
/etc`` then ``x/passwd``), or a hard link to anything but an earlier member refuses the
whole archive. Then everything is created as the main restore creates it
(:mod:`safehold.engine.restore.folders`): relative to open folder descriptors, folders
opened with ``O_NOFOLLOW``, files created with ``O_EXCL | O_NOFOLLOW``; a symlink already in
the target where a folder belongs is replaced, never followed.

Files and folders are created writable by their owner and get their final mode last
(files once written, folders at the end, deepest first), so that a read-only file or a
folder without write permission is restored by a user who is not root too.

``tarfile`` only reads the stream here (headers, pax records, data); its ``extract`` is not
used. The first pass costs what reading the headers costs: 1.1 s of CPU for an archive of
20,000 files and 300 MB (zstd included), against 4 to 12 s for the extraction on a busy
2-core machine. Tried and left out: one pass that undoes what it wrote when it meets a
hostile member (undoing is itself writing in a tree the archive may have shaped), and
keeping the plain tar in a temporary file for a second pass (its full size on disk).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import os
import pwd
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from safehold.engine.restore.folders import (
    Folder,
    folder_budget,
    make_folder,
    set_entry_meta,
    set_folder_meta,
)
from safehold.errors import IntegrityError, TargetError

__all__ = ["ExtractOptions", "ExtractResult", "check_members", "extract", "member_path"]

_PIECE = 1 << 20
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# How many refused members a message names (the count says how many there are).
_NAMED = 5

# (mode, uid, gid, mtime in ns), as engine/restore/folders.py takes it
Meta = tuple[int, int, int, int]
_T = TypeVar("_T")


def _umask() -> int:
    """The process's umask, read without changing it where the kernel tells (changing it
    is process-wide, for every thread)."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/self/status", encoding="ascii", errors="replace") as f,
    ):
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass(frozen=True, kw_only=True)
class ExtractOptions:
    """Whose files an extraction makes and with which modes: owners and exact modes as root,
    as GNU tar does; else the user's own, less ``umask``."""

    # Owners and exact modes (set-id and sticky bits too) as root, as GNU tar does; else
    # the extracting user's files, permission bits less ``umask``.
    owner: bool = field(default_factory=lambda: os.geteuid() == 0)
    umask: int = field(default_factory=_umask)


@dataclass
class ExtractResult:
    """What an extraction made (``bytes``: of file content), and what it could not make, why."""

    files: int = 0  # regular files and hard links
    dirs: int = 0
    others: int = 0  # symlinks, FIFOs, devices
    bytes: int = 0
    # (member, why) of what could not be made (a device as a user who is not root)
    errors: list[tuple[str, str]] = field(default_factory=list)


def member_path(name: str) -> str | None:
    """The path of a member name relative to the target (``./`` and empty components
    dropped; ``""`` is the target itself), or None if it would leave the target: absolute,
    or with a ``..`` component."""
    if name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


def _parents(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    out = []
    at = path.find("/")
    while at >= 0:
        out.append(path[:at])
        at = path.find("/", at + 1)
    return out


class _Checker:
    """The state of a walk over the members: which paths are symlinks the archive made,
    and which hold something a hard link may name. Used by both passes, so that the pass
    that writes checks every member again."""

    def __init__(self) -> None:
        self.symlinks: set[str] = set()
        self.linkable: set[str] = set()  # paths of earlier members that are not folders

    def check(self, m: tarfile.TarInfo) -> tuple[str, str]:
        """The member's path, or ``("", why)`` when it must be refused."""
        path = member_path(m.name)
        if path is None:
            why = "an absolute name" if m.name.startswith("/") else "a '..' component"
            return "", why
        for parent in _parents(path):
            if parent in self.symlinks:
                return "", f"below {parent!r}, a symlink of the archive"
        if m.islnk():
            target = member_path(m.linkname)
            if not target or target not in self.linkable:
                return "", f"a hard link to {m.linkname!r}, not an earlier file of the archive"
            for parent in _parents(target):  # a symlink made since in place of its folder
                if parent in self.symlinks:
                    return "", f"a hard link below {parent!r}, a symlink of the archive"
        for parent in _parents(path):  # folders now, whatever they were
            self.linkable.discard(parent)
        if m.issym():
            self.symlinks.add(path)
        else:
            self.symlinks.discard(path)
        if m.isdir() or not path:
            self.linkable.discard(path)
        else:
            self.linkable.add(path)
        return path, ""


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    # A TarFile remembers every member it read, even in stream mode; forgetting them
    # keeps memory flat however many members there are.
    seen = getattr(tar, "members", None)
    while (m := tar.next()) is not None:
        yield m
        if isinstance(seen, list):
            seen.clear()


def check_members(tar: tarfile.TarFile, archive: str) -> int:
    """Read every member header of ``tar`` (a stream) and refuse the archive, naming the
    members, if any would be written outside the target; returns how many members it
    holds."""
    checker = _Checker()
    refused: list[str] = []
    count = 0
    for m in _members(tar):
        count += 1
        _path, why = checker.check(m)
        if why:
            refused.append(f"{m.name!r} ({why})")
    if refused:
        more = f" and {len(refused) - _NAMED} more" if len(refused) > _NAMED else ""
        raise IntegrityError(
            f"archive {archive} is refused: {len(refused)} of its members would be written "
            f"outside the target: {', '.join(refused[:_NAMED])}{more}; nothing was extracted",
            hint="safehold never writes such an archive: it was damaged or replaced in the "
            "destination; restore another one, or look at it with 'tar -tv'",
        )
    return count


def _mtime_ns(m: tarfile.TarInfo) -> int:
    """The member's time to the nanosecond: the pax record as written (``tarfile`` turns it
    into a float, which keeps only microseconds), else the whole seconds of the header."""
    raw = m.pax_headers.get("mtime")
    if raw:
        with contextlib.suppress(ValueError):
            sign = -1 if raw.startswith("-") else 1
            secs, _, frac = raw.lstrip("+-").partition(".")
            return sign * (int(secs or "0") * 1_000_000_000 + int((frac + "0" * 9)[:9]))
    return int(m.mtime) * 1_000_000_000


class _Owners:
    """A member's owner as GNU tar picks it: the user and group named in the archive where
    they exist here, else the numeric ids."""

    def __init__(self) -> None:
        self._users: dict[str, int | None] = {}
        self._groups: dict[str, int | None] = {}

    def of(self, m: tarfile.TarInfo) -> tuple[int, int]:
        uid = self._lookup(self._users, m.uname, _user_id)
        gid = self._lookup(self._groups, m.gname, _group_id)
        return (m.uid if uid is None else uid), (m.gid if gid is None else gid)

    @staticmethod
    def _lookup(
        cache: dict[str, int | None], name: str, find: Callable[[str], int | None]
    ) -> int | None:
        if not name:
            return None
        if name not in cache:
            cache[name] = find(name)
        return cache[name]


def _user_id(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class _Extractor:
    def __init__(self, target: str, opts: ExtractOptions) -> None:
        self.opts = opts
        self.result = ExtractResult()
        self.owners = _Owners()
        self.top = Folder.top(target)
        # Every folder made or met, by path, in the order first met (parents before their
        # children); kept open while within the budget of descriptors.
        self.folders: dict[str, Folder] = {"": self.top}
        self.metas: dict[str, Meta] = {}  # the archive's folders: set last, deepest first
        self.modes: dict[str, int] = {}  # modes to give back to folders opened up
        self.uid = os.geteuid()
        self.as_root = self.uid == 0
        self.budget = folder_budget()
        self.kept = 0

    def close(self) -> None:
        for folder in self.folders.values():
            folder.close()

    # --- what each member becomes --------------------------------------------------------

    def meta(self, m: tarfile.TarInfo) -> Meta:
        if self.opts.owner:
            uid, gid = self.owners.of(m)
            return m.mode & 0o7777, uid, gid, _mtime_ns(m)
        return m.mode & 0o777 & ~self.opts.umask, -1, -1, _mtime_ns(m)

    def add(self, m: tarfile.TarInfo, path: str, tar: tarfile.TarFile) -> None:
        if not path:  # "." or "./": the target itself, which stays as the user made it
            return
        parent_path, _, name = path.rpartition("/")
        parent = self.folder(parent_path)
        if m.isdir():
            self.folder(path)
            self.metas[path] = self.meta(m)
            self.result.dirs += 1
            return
        with parent.descriptor() as fd:
            if m.islnk():
                self._hardlink(m, fd, name, path)
                self.result.files += 1
            elif m.issym():
                self._make(fd, name, path, lambda: os.symlink(m.linkname, name, dir_fd=fd))
                set_entry_meta(fd, name, self.meta(m), self.opts.owner, is_link=True)
                self.result.others += 1
            elif m.isfifo() or m.ischr() or m.isblk():
                self._special(m, fd, name, path)
            else:  # regular, contiguous, sparse, or a type tar does not know: its data
                self._file(m, fd, name, path, tar)

    def _file(
        self, m: tarfile.TarInfo, folder: int, name: str, path: str, tar: tarfile.TarFile
    ) -> None:
        # Created writable by its owner whatever its mode (0444, 000), written, then given
        # its owner and, last, its mode: a change of owner clears the set-id bits.
        fd = self._make(folder, name, path, lambda: os.open(name, _CREATE, 0o600, dir_fd=folder))
        try:
            src = tar.extractfile(m)
            if src is not None:
                while piece := src.read(_PIECE):
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(fd, view) :]
                    self.result.bytes += len(piece)
            mode, uid, gid, mtime_ns = self.meta(m)
            if self.opts.owner:
                with contextlib.suppress(OSError):
                    os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        self.result.files += 1

    def _hardlink(self, m: tarfile.TarInfo, folder: int, name: str, path: str) -> None:
        # check_members allowed only an earlier member that is no folder: its folder is
        # one of ours, reached without following a link.
        target = member_path(m.linkname)
        assert target
        if target == path:
            return  # a link to itself: the file is there already
        src_path, _, src_name = target.rpartition("/")
        with self.folder(src_path).descriptor() as src:
            self._make(
                folder,
                name,
                path,
                lambda: os.link(
                    src_name, name, src_dir_fd=src, dst_dir_fd=folder, follow_symlinks=False
                ),
            )

    def _special(self, m: tarfile.TarInfo, folder: int, name: str, path: str) -> None:
        if m.isfifo():
            make = functools.partial(os.mkfifo, name, 0o600, dir_fd=folder)
        else:
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            dev = os.makedev(m.devmajor, m.devminor)
            make = functools.partial(os.mknod, name, 0o600 | kind, dev, dir_fd=folder)
        try:
            self._make(folder, name, path, make)
        except PermissionError as exc:  # mknod needs CAP_MKNOD: reported, as tar does
            self.result.errors.append((path, f"cannot make the device: {exc.strerror}"))
            return
        set_entry_meta(folder, name, self.meta(m), self.opts.owner, is_link=False)
        self.result.others += 1

    def _make(self, folder: int, name: str, path: str, make: Callable[[], _T]) -> _T:
        """``make()`` the member ``name`` (exclusively: no call here follows or reuses what
        is there); if something is in the way, replace it as tar does and make it again."""
        try:
            return make()
        except FileExistsError:
            self._clear(folder, name, path)
        return make()

    def _clear(self, folder: int, name: str, path: str) -> None:
        """Make room for a member that is no folder: what is there is removed (as tar
        does), an empty folder too; a folder with something in it stays (an error)."""
        try:
            st = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=folder)  # ENOTEMPTY: a folder with things in it stays
            gone = self.folders.pop(path, None)
            if gone is not None:
                gone.close()
            self.metas.pop(path, None)
            self.modes.pop(path, None)
        else:
            os.unlink(name, dir_fd=folder)

    # --- folders -------------------------------------------------------------------------

    def folder(self, path: str) -> Folder:
        """The folder at ``path``, made (with its parents) if needed. A folder met in the
        target is used as it is; a symlink or anything else that is no folder is replaced."""
        found = self.folders.get(path)
        if found is not None:
            return found
        parent_path, _, name = path.rpartition("/")
        parent = self.folder(parent_path)
        with parent.descriptor() as pfd:
            try:
                fd, created = make_folder(name, pfd)
            except FileExistsError:  # a file, FIFO or device in the way: tar replaces it
                os.unlink(name, dir_fd=pfd)
                fd, created = make_folder(name, pfd)
            if created and self.opts.umask & 0o700:
                # Writable and searchable by its owner until the end, whatever the umask.
                with contextlib.suppress(OSError):
                    _chmod(fd, 0o700 | (0o777 & ~self.opts.umask))
            elif not created and not self.as_root:
                self._open_up(fd, path)
        folder = Folder(f"{self.top.path}/{path}", name, parent, fd)
        if self.kept < self.budget:
            self.kept += 1
        else:
            folder.close()  # opened again, from the nearest kept folder, when needed
        self.folders[path] = folder
        return folder

    def _open_up(self, fd: int, path: str) -> None:
        """A read-only folder of this user's that is already in the target (an earlier
        restore's, say: tar then fails on every file in it) is made writable and
        searchable by its owner until the end, when it gets its mode back, or the
        archive's. Someone else's is left alone: root writes in it anyway."""
        st = os.fstat(fd)
        if st.st_uid == self.uid and st.st_mode & 0o300 != 0o300:
            _chmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
            self.modes[path] = stat.S_IMODE(st.st_mode)

    def finish_folders(self) -> None:
        """Owner, mode and times of the archive's folders, children before their parents
        (a folder made read-only or closed first would keep its children from theirs; its
        children's entries, made earlier, no longer change its times)."""
        for path in reversed(self.folders):
            meta = self.metas.get(path)
            mode = self.modes.get(path)
            if meta is None and mode is None:
                continue
            with self.folders[path].descriptor() as fd:
                if meta is not None:
                    set_folder_meta(fd, meta, self.opts.owner)
                elif mode is not None:
                    _chmod(fd, mode)


def extract(tar: tarfile.TarFile, target: str, opts: ExtractOptions, archive: str) -> ExtractResult:
    """Extract every member of ``tar`` (a stream that :func:`check_members` accepted)
    into the folder ``target``. A member that cannot be written stops the extraction with
    a :class:`TargetError` that says how far it got; the folders made until then still get
    their metadata."""
    try:
        os.makedirs(target, exist_ok=True)
        ex = _Extractor(target, opts)
    except OSError as exc:
        raise TargetError(
            f"cannot open the restore target {target}: {exc.strerror or exc}",
            hint="give a folder you can write to as --target",
        ) from exc
    checker = _Checker()
    done = 0
    try:
        for m in _members(tar):
            path, why = checker.check(m)
            if why:  # the stream changed between the passes (it is a private file)
                raise IntegrityError(f"archive {archive}: member {m.name!r} is {why}")
            try:
                ex.add(m, path, tar)
            except OSError as exc:
                raise _stopped(exc, m.name, done, target) from exc
            done += 1
    except BaseException:
        with contextlib.suppress(OSError):  # what was made keeps its modes and times
            ex.finish_folders()
        ex.close()
        raise
    try:
        ex.finish_folders()
    except OSError as exc:
        raise TargetError(
            f"cannot set the owner, mode or times of a folder in {target}: {exc}",
            hint="check the --target folder",
        ) from exc
    finally:
        ex.close()
    return ex.result


def _chmod(fd: int, mode: int) -> None:
    """``fchmod``, also of a descriptor opened for its path only (restore's folders.py opens a
    folder it may not read so)."""
    try:
        os.chmod(fd, mode)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        os.chmod(f"/proc/self/fd/{fd}", mode)


def _stopped(exc: OSError, name: str, done: int, target: str) -> TargetError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    why = "the restore target is full" if full else exc.strerror or str(exc)
    return TargetError(
        f"cannot write {name!r} into {target}: {why}; the {done} member(s) before it in the "
        "archive were extracted, it and those after it were not",
        hint="free space or restore to another --target"
        if full
        else "check the --target folder (its owner, its permissions, what is in it)",
    )
