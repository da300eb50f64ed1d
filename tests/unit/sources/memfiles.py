"""A SnapshotFiles held in memory, for restoring sources without a repository.

The real one (``safehold.runs.snapshot_files.snapshot_files``) is exercised by
tests/integration/test_source_files.py; this one hands a source bytes its own stream
produced, through small reads, as the real reader may.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, cast

from safehold.errors import UsageError
from safehold.sources.base import Stream


class _Trickle(io.RawIOBase):
    """Hands out at most ``step`` bytes per read, to catch readers assuming full reads."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self._step, len(self._data))
        memoryview(buf).cast("B")[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


class MemoryFiles:
    def __init__(self, files: dict[str, bytes], *, step: int = 1_000_003) -> None:
        self.files = files
        self.step = step

    def names(self) -> list[str]:
        return list(self.files)

    def size(self, name: str) -> int:
        return len(self._get(name))

    def _get(self, name: str) -> bytes:
        if name not in self.files:
            raise UsageError(f"no file {name!r}")
        return self.files[name]

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        yield cast(BinaryIO, _Trickle(self._get(name), self.step))


def read_stream(stream: Stream, piece: int = 1 << 20, *, size: int = 0) -> bytearray:
    """Reads a stream the way the engine does: ``readinto`` pieces of at most ``piece``
    bytes. ``size`` preallocates the result (a large stream is then read in place)."""
    out = bytearray(size)
    view = memoryview(out)
    pos = 0
    with stream.open() as r:
        while True:
            if pos + piece > len(out):
                view.release()
                out.extend(bytes(piece))
                view = memoryview(out)
            got = r.readinto(view[pos : pos + piece])  # type: ignore[attr-defined]
            if not got:
                break
            pos += got
    view.release()
    del out[pos:]
    return out
