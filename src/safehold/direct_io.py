"""Direct writes: large buffers go to disk with ``O_DIRECT``, past the page cache.

A buffered write copies every byte into page-cache pages, which the kernel writes back
later. On the virtual machines safehold is measured on, touching fresh page-cache pages
costs more than anything else a write does: an initial backup spent 11 % of its CPU time
copying its packs into the page cache, and a restore up to half of its own. A direct write
hands the device the caller's memory instead: no page-cache copy, no dirty memory, no
write-back competing for the cores afterwards, and the data is on disk when the call
returns.

Direct I/O wants the file offset, the length and the memory address aligned to the
device's logical block size. :meth:`DirectWrites.write` copies the whole blocks inside a
buffer, ``PIECE`` bytes at a time, into a page-aligned staging buffer of the calling thread
and writes them from there; the partial blocks at the two ends go through the page cache
(a block is only ever written one way, so the two never overlap). ``ALIGN`` (4 KiB) covers
the logical block size of nearly every device. A device with larger blocks refuses the
write, and a file system without direct I/O (some FUSE and network ones) refuses the flag,
both with ``EINVAL``: the first refusal turns direct writes off for the rest of the
object's life and everything goes through the page cache as before.

A file-system helper on the ground floor, not a storage backend: the local storage's put
writes its packs with it and restore the files it restores, and neither is the other's.

Callers ask :func:`suits_direct_io` first: direct writes are used only on file systems
that sit on a block device (ext4, XFS, btrfs, F2FS). Elsewhere direct I/O is refused,
emulated, or slower than the page cache (on NFS every direct write waits for the server).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading

ALIGN = max(4096, mmap.PAGESIZE)
PIECE = 1024 * 1024


# File systems on block devices, where a direct write goes to the device as it is.
DIRECT_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})
MOUNTINFO = "/proc/self/mountinfo"


def file_system_type(path: str | os.PathLike[str]) -> str:
    """The type of the file system holding ``path`` (or its nearest existing parent), as
    the kernel's mount table names it; "" if it cannot be told."""
    probe = os.path.abspath(path)
    while True:
        try:
            dev = os.stat(probe).st_dev
            break
        except OSError:
            parent = os.path.dirname(probe)
            if parent == probe:
                return ""
            probe = parent
    want = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        # id parent major:minor root mount-point options [optional...] - type source ...
        fields = line.split()
        if len(fields) > 2 and fields[2] == want and "-" in fields[6:]:
            rest = fields[fields.index("-", 6) + 1 :]
            return rest[0] if rest else ""
    return ""


def suits_direct_io(path: str | os.PathLike[str]) -> bool:
    """Whether files under ``path`` should get direct writes (see the module docstring)."""
    return hasattr(os, "O_DIRECT") and file_system_type(path) in DIRECT_FILE_SYSTEMS


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset``."""
    n = os.pwrite(fd, data, offset)
    while n < len(data):  # a short write (the disk filling up) reports its error next
        view = memoryview(data)[n:]
        n += os.pwrite(fd, view, offset + n)


class DirectWrites:
    """Direct writes for any number of threads (one staging buffer each)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and hasattr(os, "O_DIRECT")
        self._local = threading.local()

    def _staging(self) -> mmap.mmap:
        # Anonymous mappings start on a page boundary. Kept for the thread's life, so its
        # pages are touched once, not once per write.
        buf: mmap.mmap | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = mmap.mmap(-1, PIECE)
        return buf

    def write(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` of ``fd``: its whole blocks directly (while direct
        writes are on), through the staging buffer; the rest through the page cache."""
        self._write(fd, memoryview(data).cast("B"), offset, staged=True)

    def write_aligned(self, fd: int, data: memoryview, offset: int) -> None:
        """:meth:`write` for ``data`` whose address is ``offset`` modulo ``ALIGN`` (it sits
        in page-aligned memory at ``offset % ALIGN``): its whole blocks go to the disk from
        where they are, with no copy. Misplaced data makes the kernel refuse (``EINVAL``),
        which turns direct writes off like any refusal."""
        self._write(fd, data.cast("B"), offset, staged=False)

    def _write(self, fd: int, view: memoryview, offset: int, *, staged: bool) -> None:
        start = -offset % ALIGN
        end = start + max(0, len(view) - start) // ALIGN * ALIGN
        if not self.enabled or end <= start:
            write_all(fd, view, offset)
            return
        if start:
            write_all(fd, view[:start], offset)
        buf = memoryview(self._staging()) if staged else None
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        pos = start
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
            while pos < end:
                if buf is not None:
                    n = min(PIECE, end - pos)
                    buf[:n] = view[pos : pos + n]
                    piece = buf[:n]
                else:
                    n = end - pos
                    piece = view[pos:end]
                done = os.pwrite(fd, piece, offset + pos)
                pos += done
                if done < n:
                    break  # a short write: the rest goes the usual way, which reports why
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.enabled = False  # this file system or device takes no direct writes
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        write_all(fd, view[pos:], offset + pos)
