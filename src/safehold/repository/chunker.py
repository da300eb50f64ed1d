"""Content-defined chunking (FastCDC 2020) with a gear table seeded per repository.

A per-repository seed keeps cut points from being a fingerprint of known content across
repositories. Sizes are the repository's (config), measured on the benchmark data set:
see docs/format.md ("Chunking parameters").
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkerParams:
    """A repository's chunk sizes (bytes) and gear seed, stored in its config: they decide the
    cut points, so they never change after ``init``."""

    min_size: int = 512 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 8 * 1024 * 1024
    seed: int = 0

    def to_json(self) -> dict[str, int]:
        """The parameters as the repository config stores them."""
        return {
            "min_size": self.min_size,
            "avg_size": self.avg_size,
            "max_size": self.max_size,
            "seed": self.seed,
        }


class Chunker:
    """Cuts buffers and streams; one instance per thread (FastCDC objects are not shared)."""

    def __init__(self, params: ChunkerParams) -> None:
        # Imported with the first chunker: its module maps 3.8 MB, which a backup that
        # finds nothing changed never needs (the repository's config imports this module).
        from pyfastcdc import FastCDC

        self.params = params
        # pyfastcdc's avg_size excludes min_size (cut-point skipping); pass the difference so
        # that the configured average is the average callers see.
        self._cdc = FastCDC(
            avg_size=max(256, params.avg_size - params.min_size),
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=1,
            seed=params.seed,
        )

    def cut(self, buf: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Views of ``buf`` cut into chunks (valid while ``buf`` is)."""
        view = memoryview(buf)
        for chunk in self._cdc.cut_buf(view):
            yield view[chunk.offset : chunk.offset + chunk.length]

    def stream_buffer(self) -> memoryview:
        """A buffer for ``cut_stream``: a maximal chunk plus room to read ahead.

        Anonymous memory, so only the pages a stream reaches are ever touched, and dropping
        the last view gives them back.
        """
        size = self.params.max_size + self.params.avg_size
        return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE))

    def cut_stream(
        self, read_into: Callable[[memoryview], int | None], buf: bytearray | memoryview
    ) -> Iterator[memoryview]:
        """Chunks of a stream, using the caller's buffer (more than ``max_size`` bytes, e.g.
        from ``stream_buffer``).

        A cut point depends only on the bytes from its chunk's start, and a chunk is only
        cut short by the end of the data when it reaches that end, so cutting a window of
        the stream gives the same chunks as cutting the whole stream, except the last one,
        which the window's end may have cut: that one is moved to the front and cut again
        once more data is in. The window starts at a few average chunks and widens only
        when a chunk does not fit, so that the rest of the buffer is never touched. Each
        yielded view is valid until the next one is requested.
        """
        if len(buf) <= self.params.max_size:
            raise ValueError("stream buffer must hold more than one maximal chunk")
        view = memoryview(buf)
        size = min(len(view), 4 * self.params.avg_size)
        filled = 0
        eof = False
        while True:
            while not eof and filled < size:
                got = read_into(view[filled:size])
                if not got:
                    eof = True
                else:
                    filled += got
            if filled == 0:
                return
            start = 0
            for chunk in self._cdc.cut_buf(view[:filled]):
                end = chunk.offset + chunk.length
                if not eof and end == filled:
                    break  # cut by the window's end, not by content: carry it over
                yield view[chunk.offset : end]
                start = end
            if eof and start == filled:
                return
            if start == 0:  # not one chunk ends in the window: widen it
                size = min(2 * size, len(view))
                continue
            rest = filled - start
            view[:rest] = view[start:filled]
            filled = rest
