"""Streams into a snapshot: standard input, a command's output, a stream source's dumps.

Each stream becomes one file at the snapshot's root, named by one path component
(docs/format.md, "Trees"). A stream is chunked in the reading thread and its chunks are
sealed in a pool, in order; at most ``2 x threads`` chunks are in memory and nothing goes
to a temporary file, so a dump larger than the free disk still backs up. A producer that
fails raises :class:`~safehold.errors.SourceError` when its stream closes, and then no
snapshot is written: the packs already stored are indexed by the caller and reused by the
next run (docs/architecture.md, "Backup pipeline").
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import IO, BinaryIO

from safehold.engine.backup.file_reader import Counters
from safehold.engine.progress import Progress
from safehold.errors import SourceError, UsageError
from safehold.ids import HexId
from safehold.repository import tree as t
from safehold.repository.chunker import Chunker
from safehold.repository.format import BLOB_DATA, BLOB_TREE
from safehold.repository.repository import Repository
from safehold.repository.saver import BlobSaver
from safehold.sources.base import Stream
from safehold.sources.process import command_stream


def stream_name(name: str) -> str:
    """The root file name of a stream: one path component (docs/format.md, "Trees")."""
    out = name.strip("/").replace("/", "_") or "stdin"
    if out in (".", "..") or "\0" in out:
        raise UsageError(
            f"{name!r} cannot be a file name in a snapshot", hint="give --stdin-name a file name"
        )
    return out


def one_stream(name: str, *, command: list[str] | None, stdin: BinaryIO | None) -> Stream:
    """Standard input, or ``command``'s standard output when given, as a stream ``name``."""
    name = stream_name(name)
    if command:
        argv = command
        return Stream(name, lambda: command_stream(argv, what=f"command {shlex.join(argv)}"))
    assert stdin is not None
    return Stream(name, lambda: nullcontext(stdin))


def backup_streams(
    repo: Repository,
    saver: BlobSaver,
    streams: list[Stream],
    threads: int,
    counters: Counters,
    progress: Progress,
) -> HexId:
    """Save ``streams`` one after the other as the files of a root tree; returns its id
    (hex). The first stream whose producer fails stops the backup with SourceError."""
    nodes = [_backup_stream(repo, saver, s, threads, counters, progress) for s in streams]
    nodes.sort(key=lambda n: n.name)  # trees are sorted by name
    return HexId(saver.save(BLOB_TREE, t.encode_tree(nodes))[0].hex())


def _backup_stream(
    repo: Repository,
    saver: BlobSaver,
    stream: Stream,
    threads: int,
    counters: Counters,
    progress: Progress,
) -> t.Node:
    """Save one stream as a file; its close raises SourceError if the producer failed."""
    now_ns = time.time_ns()
    node = t.Node(
        name=stream_name(stream.name),
        type=t.FILE,
        mode=stream.mode,
        mtime_ns=now_ns,
        ctime_ns=now_ns,
    )
    node.uid, node.gid = os.getuid(), os.getgid()
    progress.start("backup")
    try:
        with stream.open() as reader:
            node.content, node.size = _save_stream(repo, saver, reader, threads, progress)
    except SourceError as exc:
        # On the first line: a failed tool's message goes on with its standard error.
        first, sep, rest = exc.message.partition("\n")
        raise SourceError(
            f"{first}; no snapshot was saved{sep}{rest}",
            hint=exc.hint
            or "fix the command or source; data it produced is kept and reused by the next backup",
        ) from exc
    counters.files_new += 1
    counters.bytes_read += node.size
    counters.total_bytes += node.size
    progress.finish()
    return node


def _save_stream(
    repo: Repository, saver: BlobSaver, stream: IO[bytes], threads: int, progress: Progress
) -> tuple[list[HexId], int]:
    """Chunk a stream in this thread and seal chunks in a pool, keeping their order.

    Never touches a temporary file: at most ``2 * threads`` chunks are in memory.
    """
    chunker = Chunker(repo.config.chunker)
    slots = threading.BoundedSemaphore(2 * threads)
    futures: list[Future[tuple[bytes, bool]]] = []
    total = 0

    def save(data: bytes) -> tuple[bytes, bool]:
        try:
            return saver.save(BLOB_DATA, data)
        finally:
            slots.release()

    with ThreadPoolExecutor(threads, thread_name_prefix="seal") as pool:
        buf = chunker.stream_buffer()
        for piece in chunker.cut_stream(stream.readinto, buf):  # type: ignore[attr-defined]
            slots.acquire()
            data = bytes(piece)  # the buffer is reused for the next chunk
            total += len(data)
            futures.append(pool.submit(save, data))
            progress.advance(0, len(data))
        ids = [HexId(f.result()[0].hex()) for f in futures]
    return ids, total
