"""Stream cutting with a window of one maximal chunk plus a little read-ahead."""

from __future__ import annotations

import io
import os

import pytest

from safehold.repository.chunker import Chunker, ChunkerParams

PARAMS = ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024, seed=3)


class _Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, as pipes do."""

    def __init__(self, data: bytes, step: int) -> None:
        self._src = io.BytesIO(data)
        self._step = step

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        return self._src.readinto(memoryview(b)[: self._step])


@pytest.mark.parametrize("window", [PARAMS.max_size + 1, PARAMS.max_size + 4096, None])
@pytest.mark.parametrize("step", [1 << 30, 10_000])
def test_a_small_window_cuts_streams_as_the_whole_buffer(window: int | None, step: int) -> None:
    chunker = Chunker(PARAMS)
    # Random data with long runs of zeros, so that some chunks end at max_size.
    data = b"".join(os.urandom(50_000) + bytes(600_000) for _ in range(4)) + os.urandom(99)
    whole = [bytes(c) for c in chunker.cut(data)]
    assert any(len(c) == PARAMS.max_size for c in whole)
    buf = memoryview(bytearray(window)) if window else chunker.stream_buffer()
    assert len(buf) > PARAMS.max_size
    streamed = [bytes(c) for c in chunker.cut_stream(_Trickle(data, step).readinto, buf)]
    assert streamed == whole


def test_the_window_must_hold_more_than_a_maximal_chunk() -> None:
    with pytest.raises(ValueError):
        next(Chunker(PARAMS).cut_stream(io.BytesIO(b"x").readinto, bytearray(PARAMS.max_size)))
