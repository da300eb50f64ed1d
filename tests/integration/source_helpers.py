"""Helpers for the database-source tests: take a source's streams, hand them back.

``dump_to_dir`` reads every stream of a source the way the engine does (open, read to the
end, close — where a failed dump raises) into files; ``DirFiles`` offers such a folder to
``Source.restore`` as the :class:`SnapshotFiles` the engine would. ``backup`` and
``files_of`` do the same through the real engine and repository.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO

from safehold.engine.backup import BackupOptions, BackupResult, run_backup
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.runs.snapshot_files import snapshot_files
from safehold.sources.base import SnapshotFiles, Source, Stream, StreamContent

__all__ = [
    "DirFiles",
    "Writer",
    "backup",
    "dump_to_dir",
    "files_of",
    "kill_child",
    "killing_after",
]


def backup(repo: Repository, source: Source, name: str) -> BackupResult:
    """One backup of ``source`` through the engine, as configured source ``name``."""
    content = source.content()
    assert isinstance(content, StreamContent)
    opts = BackupOptions(streams=content.streams, source_kind=source.kind, source_name=name)
    return run_backup(repo, opts)


def files_of(repo: Repository, snap: Snapshot) -> SnapshotFiles:
    return snapshot_files(repo, snap)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every descendant of ``pid``, from /proc."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, _, rest = f.read().rpartition(")")
        except OSError:
            continue
        comm = head.partition("(")[2]
        parents.setdefault(int(rest.split()[1]), []).append((int(entry), comm))
    out: list[tuple[int, str]] = []
    stack = [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            out.append(child)
            stack.append(child[0])
    return out


def kill_child(name: str) -> int:
    """SIGKILL this process's descendants called ``name``; how many there were."""
    victims = [pid for pid, comm in _children(os.getpid()) if comm == name]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return len(victims)


def killing_after(stream: Stream, nbytes: int, kill: str | Callable[[], int]) -> Stream:
    """``stream``, but once ``nbytes`` have been read its producer is killed: every child
    process named ``kill``, or whatever the callable ``kill`` does (it returns how many
    processes it killed)."""
    killer = kill if callable(kill) else lambda: kill_child(kill)

    @contextmanager
    def opened() -> Iterator[BinaryIO]:
        with stream.open() as reader:
            yield _Killer(reader, nbytes, killer)  # type: ignore[misc]

    return Stream(stream.name, opened)


class _Killer:
    def __init__(self, inner: BinaryIO, nbytes: int, kill: Callable[[], int]) -> None:
        self.inner, self.left, self.kill = inner, nbytes, kill
        self.killed = 0

    def read(self, n: int = -1) -> bytes:
        # Small reads, so the kill lands while the producer still has output to write.
        data = self.inner.read(min(n, 1 << 16) if n >= 0 else 1 << 16)
        self.left -= len(data)
        if self.left <= 0 and not self.killed:
            self.killed = self.kill()
            assert self.killed, "no process to kill"
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def dump_to_dir(source: Source, folder: Path) -> list[str]:
    """Every stream of ``source`` as a file in ``folder``; the names, in order."""
    content = source.content()
    assert isinstance(content, StreamContent)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for stream in content.streams:
        with stream.open() as reader, open(folder / stream.name, "wb") as out:
            while piece := reader.read(1 << 20):
                out.write(piece)
        names.append(stream.name)
    (folder / ".order").write_text("\n".join(names))
    return names


class DirFiles:
    """A folder written by :func:`dump_to_dir`, as a snapshot's root files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def names(self) -> list[str]:
        return (self.folder / ".order").read_text().split("\n")

    def size(self, name: str) -> int:
        return (self.folder / name).stat().st_size

    def open(self, name: str) -> AbstractContextManager[BinaryIO]:
        @contextmanager
        def reader() -> Iterator[BinaryIO]:
            with open(self.folder / name, "rb") as f:
                yield f

        return reader()


class Writer:
    """Calls ``step(i)`` in a thread, again and again, until stopped (a busy client)."""

    def __init__(self, step: Callable[[int], None]) -> None:
        self.step = step
        self.count = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="writer")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step(self.count)
                self.count += 1
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None and exc[0] is None:
            raise AssertionError(f"the writer failed: {self.error!r}") from self.error
