"""A file that changes while the backup reads it is read again, once, and otherwise named
in the snapshot's errors (docs/format.md, section 11), never stored torn in silence.

The change happens at a fixed point of the read, not at a time: the reader reports each
saved chunk to its progress sink before it reads on, and the sink below changes the file
at the first chunk of each read. A file larger than the chunker's first window (4 MiB)
is still being read at that point."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from safehold.engine.backup.file_reader import CHANGED_WHILE_READ, Counters, FileReader
from safehold.engine.backup.scan import node_from_stat
from safehold.engine.backup.vanished import Vanished
from safehold.engine.progress import Progress
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.saver import BlobSaver

MIB = 1 << 20
SIZE = 12 * MIB


class ChangeAtFirstChunk(Progress):
    """Runs the next action at the first chunk of each read of the file (a read starts the
    backup's count of the file's bytes afresh: the reader takes back what an abandoned
    read counted)."""

    def __init__(self, actions: list[Callable[[], None]]) -> None:
        self.actions = actions
        self.fresh = True
        self.warnings: list[tuple[str, str]] = []
        self.done = 0

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        self.done += nbytes
        if nbytes < 0:
            self.fresh = True
        elif nbytes > 0 and self.fresh:
            self.fresh = False
            if self.actions:
                self.actions.pop(0)()

    def warn(self, path: str, message: str) -> None:
        self.warnings.append((path, message))


def read_with(
    repo: Repository, path: Path, progress: ChangeAtFirstChunk
) -> tuple[t.Node, list[tuple[str, str]], bytes]:
    """Reads ``path`` as a backup does; returns its node, the errors, and what was stored."""
    saver = BlobSaver(repo, bytes(16))
    errors: list[tuple[str, str]] = []
    reader = FileReader(repo, saver, Counters(), errors, progress, Vanished())
    node = node_from_stat(path.name, os.lstat(path), str(path))
    reader.read((str(path), node))
    saver.finish()
    stored = b"".join(repo.load_blob(bytes.fromhex(i)) for i in node.content)
    return node, errors, stored


def overwrite(path: Path, data: bytes, mtime_ns: int) -> Callable[[], None]:
    """Rewrites the file in place, same size, and sets a time no clock tick could give."""

    def act() -> None:
        with open(path, "r+b") as f:
            f.write(data)
        os.utime(path, ns=(mtime_ns, mtime_ns))

    return act


def test_a_file_changed_during_the_read_is_read_again(mem_repo: Repository, tmp_path: Path) -> None:
    path = tmp_path / "db.bin"
    path.write_bytes(os.urandom(SIZE))
    new = os.urandom(SIZE)
    # Rewritten after the first chunk: the first read holds old bytes, then new ones.
    progress = ChangeAtFirstChunk([overwrite(path, new, 1_000_000_000)])
    node, errors, stored = read_with(mem_repo, path, progress)
    assert stored == new  # not the mix of old and new bytes the first read got
    assert errors == [] and progress.warnings == []
    assert node.size == SIZE and node.error == ""
    assert progress.done == SIZE  # the abandoned read is not counted twice


def test_a_file_that_changes_on_both_reads_is_named_in_the_errors(
    mem_repo: Repository, tmp_path: Path
) -> None:
    path = tmp_path / "growing.log"
    path.write_bytes(os.urandom(SIZE))
    walk = os.lstat(path)
    # Truncated during the first read, then during the second: each read ends short.
    progress = ChangeAtFirstChunk(
        [lambda: os.truncate(path, 7 * MIB), lambda: os.truncate(path, 6 * MIB)]
    )
    node, errors, stored = read_with(mem_repo, path, progress)
    assert errors == [(str(path), CHANGED_WHILE_READ)]
    assert progress.warnings == [(str(path), CHANGED_WHILE_READ)]
    # Stored as read, and restorable: the node holds the content and no error of its own.
    assert stored == path.read_bytes() and node.size == 6 * MIB and node.error == ""
    # The walk's times stay, so the next backup reads the file again.
    assert (node.mtime_ns, node.ctime_ns) == (walk.st_mtime_ns, walk.st_ctime_ns)


def test_a_small_file_read_in_one_call_and_one_that_grew_since_the_walk(
    mem_repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of one chunk is read in one readv when it has the size the walk saw (no
    second call to find its end); one that grew after the walk is still stored whole."""
    calls: list[int] = []
    real = os.readv

    def counting(fd: int, buffers: list[memoryview]) -> int:
        calls.append(fd)
        return real(fd, buffers)

    monkeypatch.setattr(os, "readv", counting)
    path = tmp_path / "mail"
    path.write_bytes(b"m" * 3000)
    node, errors, stored = read_with(mem_repo, path, ChangeAtFirstChunk([]))
    assert (stored, errors, len(calls)) == (b"m" * 3000, [], 1)

    grown = tmp_path / "grown"
    grown.write_bytes(b"a" * 3000)
    node = node_from_stat(grown.name, os.lstat(grown), str(grown))
    with open(grown, "ab") as f:
        f.write(b"b" * 100)
    os.utime(grown, ns=(node.mtime_ns + 7, node.mtime_ns + 7))
    saver = BlobSaver(mem_repo, bytes(16))
    errors = []
    FileReader(mem_repo, saver, Counters(), errors, ChangeAtFirstChunk([]), Vanished()).read(
        (str(grown), node)
    )
    saver.finish()
    stored = b"".join(mem_repo.load_blob(bytes.fromhex(i)) for i in node.content)
    assert (stored, node.size, errors) == (b"a" * 3000 + b"b" * 100, 3100, [])
