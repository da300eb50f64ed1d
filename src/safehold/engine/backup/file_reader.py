"""Reading the files the walk found new or changed: the reader threads' work.

Each reader thread keeps its own chunker and buffers (:class:`ReadState`); the blobs go
to the repository through the narrow ``BlobSaver``. Which file a thread reads next is the
read queue's choice (``read_queue.py``: the largest known so far, then the files of one
chunk in walk order).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from safehold.engine import xattrs as xa
from safehold.engine.backup.tiny_procs import BLOB, EMPTY, OS_ERROR, Result, read_whole
from safehold.engine.backup.vanished import VANISHED, Vanished
from safehold.engine.progress import Progress
from safehold.ids import HexId, to_hex
from safehold.repository import tree as t
from safehold.repository.chunker import Chunker
from safehold.repository.format import BLOB_DATA
from safehold.repository.repository import Repository
from safehold.repository.saver import BlobSaver


@dataclass
class Counters:
    """What the walk and the readers count, for the backup's summary."""

    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    bytes_read: int = 0
    total_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


# Recorded in the snapshot's errors (exit 3) for a file that changed while it was read,
# twice: its content is what was read, possibly torn, and restores as such.
CHANGED_WHILE_READ = "changed while read: stored as read"


class FileReader:
    """Reads a file the walk found new or changed and saves its chunks.

    A file that changes while it is read would be stored torn (a prefix, or old and new
    parts mixed), so the open descriptor is stat-ed once after reading and compared with
    the walk's lstat (size, mtime, ctime), as borg and restic compare before and after:
    the walk's lstat is the "before", so that an unchanged file costs one fstat and a file
    reused from the parent nothing. A difference means the file changed after the walk,
    before it was opened or while it was read; it is then read once more through the same
    descriptor, between that fstat and another. If it changed again, what the second read
    got is stored and the file is named in the snapshot's errors (CHANGED_WHILE_READ) and
    warned about. The node keeps the walk's times either way, so the next backup reads the
    file again (its times differ by then) rather than trusting this content.
    """

    def __init__(
        self,
        repo: Repository,
        saver: BlobSaver,
        counters: Counters,
        errors: list[tuple[str, str]],
        progress: Progress,
        vanished: Vanished,
    ) -> None:
        self.repo = repo
        self.saver = saver
        self.counters = counters
        self.errors = errors
        self.progress = progress
        self.vanished = vanished
        self._local = threading.local()

    def _state(self) -> ReadState:
        st: ReadState | None = getattr(self._local, "st", None)
        if st is None:
            st = self._local.st = ReadState(Chunker(self.repo.config.chunker))
        return st

    def read(self, job: tuple[str, t.Node]) -> None:
        """Read and save one changed file (a reader thread's job): its node gets the content ids
        and the size read; a file that cannot be read keeps its metadata and an error."""
        path, node = job
        try:
            content, size, changed = self._read(path, node)
        except OSError as exc:
            self.failed(path, node, exc)
            return
        self.done(path, node, content, size, changed)

    def failed(self, path: str, node: t.Node, exc: OSError) -> None:
        """``path`` could not be read: its node keeps its metadata and gets the error."""
        msg = exc.strerror or str(exc)
        node.error = msg
        node.content = []
        gone = self.vanished.folder_of(path, exc)
        if gone is None or gone[1]:
            self._report(*((path, msg) if gone is None else (gone[0], VANISHED)))
        self.progress.advance(1, node.size)

    def _report(self, where: str, why: str) -> None:
        """A problem of ``where``: in the snapshot's errors, and warned about."""
        with self.counters.lock:
            self.errors.append((where, why))
        self.progress.warn(where, why)

    def done(self, path: str, node: t.Node, content: list[HexId], size: int, changed: bool) -> None:
        """``path`` was read (``size`` bytes, stored as ``content``; ``changed``: it changed
        while read, see above)."""
        node.content = content
        if size != node.size:
            # The file changed since the walk; record what we stored.
            self.progress.advance(0, size - node.size)
            node.size = size
        with self.counters.lock:
            self.counters.bytes_read += size
            if changed:
                self.errors.append((path, CHANGED_WHILE_READ))
        if changed:
            self.progress.warn(path, CHANGED_WHILE_READ)
        self.progress.advance(1, 0)

    def sealed_many(self, answers: Sequence[tuple[str, t.Node, Result]]) -> None:
        """A batch of what a forked reader made of tiny files (engine/backup/tiny_procs.py),
        saved and recorded as :meth:`read` would have: their blobs saved in one call, the
        counters and the progress told once; with the attributes it read, where it read
        them (the walk left them to it). A file that changed while read, or whose size is
        not the walk's, takes :meth:`done`'s steps one by one."""
        blobs = [
            (r.blob_id, r.comp_id, r.sealed, r.size) for _p, _n, r in answers if r.kind == BLOB
        ]
        if blobs:
            self.saver.save_sealed_many(BLOB_DATA, blobs)
        files = nbytes = 0
        for path, node, res in answers:
            if res.attrs is not None:
                node.xattrs = res.attrs
                if res.attrs_problem:
                    self._report(path, xa.not_saved(res.attrs_problem))
            kind = res.kind
            if kind == BLOB and not res.changed and res.size == node.size:
                node.content = [to_hex(res.blob_id)]
                files += 1
                nbytes += res.size
            elif kind == BLOB:
                self.progress.advance(0, res.size)
                self.done(path, node, [to_hex(res.blob_id)], res.size, res.changed)
            elif kind == EMPTY and not res.changed and not node.size:
                node.content = []
                files += 1
            elif kind == EMPTY:
                self.done(path, node, [], 0, res.changed)
            elif kind == OS_ERROR:
                self.failed(path, node, OSError(res.errno, res.message, path))
            else:  # grown past one chunk since the walk: read here, through the chunker
                self.read((path, node))
        if nbytes:
            with self.counters.lock:
                self.counters.bytes_read += nbytes
        if files:
            self.progress.advance(files, nbytes)

    def _read(self, path: str, node: t.Node) -> tuple[list[HexId], int, bool]:
        """The file's chunk ids and size, and whether it changed while read (see above)."""
        # os.open, not open(): FileIO stats every file it opens (to refuse a folder), so
        # the fstat after reading keeps the syscalls per file what they were. A folder put
        # in the file's place fails its first read instead (EISDIR).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ids, size = self._read_from(fd, node.size)
            after = os.fstat(fd)
            if (
                after.st_ctime_ns == node.ctime_ns
                and after.st_mtime_ns == node.mtime_ns
                and after.st_size == node.size
            ):
                return ids, size, False
            self.progress.advance(0, -size)  # counted again by the second read
            os.lseek(fd, 0, os.SEEK_SET)
            ids, size = self._read_from(fd, after.st_size)
            again = os.fstat(fd)
        finally:
            os.close(fd)
        changed = (
            again.st_ctime_ns != after.st_ctime_ns
            or again.st_mtime_ns != after.st_mtime_ns
            or again.st_size != after.st_size
        )
        return ids, size, changed

    def _read_from(self, fd: int, expected: int) -> tuple[list[HexId], int]:
        st = self._state()
        chunker = st.chunker
        save: Callable[[int, bytes | memoryview], tuple[bytes, bool]] = self.saver.save
        ids: list[HexId] = []
        total = 0
        if expected <= chunker.params.min_size:
            # One chunk: read it whole (it may have grown since the walk) into a buffer
            # of that size. Larger files come first, so let their window go.
            st.window = None
            view = st.small
            n = read_whole(fd, view, expected)
            if n <= chunker.params.min_size:
                if n:
                    ids.append(HexId(save(BLOB_DATA, view[:n])[0].hex()))
                    self.progress.advance(0, n)
                return ids, n
            os.lseek(fd, 0, os.SEEK_SET)
        if st.window is None:
            st.window = chunker.stream_buffer()
        for piece in chunker.cut_stream(lambda view: os.readv(fd, (view,)), st.window):
            ids.append(HexId(save(BLOB_DATA, piece)[0].hex()))
            total += len(piece)
            self.progress.advance(0, len(piece))
        return ids, total


class ReadState:
    """One reader thread's chunker and buffers: a small one for files of one chunk, and a
    stream window for larger files, kept while they come and dropped at the first small
    file so that it does not stay resident for the rest of the backup."""

    __slots__ = ("chunker", "small", "window")

    def __init__(self, chunker: Chunker) -> None:
        self.chunker = chunker
        self.small = memoryview(bytearray(chunker.params.min_size + 1))
        self.window: memoryview | None = None
