"""Compression of blob and object payloads, registered by id (docs/format.md)."""

from __future__ import annotations

import threading

import zstandard

from safehold.errors import FormatError, IntegrityError

COMP_NONE = 0
COMP_ZSTD = 1
DEFAULT_LEVEL = 3
# Below this size compression rarely pays for its byte of overhead and its call.
MIN_COMPRESS = 64

_local = threading.local()


# Level 3 is zstd's level 3 for inputs over 256 KiB with a minimum match of 6 bytes instead
# of 5, for inputs of TUNED_MIN bytes or more. On the benchmark data (docs/benchmarks.md)
# that compressed 1 MiB chunks of SQL 8.5 % faster and 1.3 % smaller than plain level 3.
# Smaller inputs get zstd's own level 3, whose parameters zstd picks for their size: the
# tuned ones made the 200,000 mail-sized files of bench/small_files.py 2.2 % larger
# (min_match 6 finds fewer matches in short text) and were no smaller below 64 KiB on the
# benchmark data either (measured in docs/benchmarks.md "Session 18"). Any zstd decoder
# reads the result: the parameters are the writer's choice.
TUNED_MIN = 64 * 1024
_TUNED = {
    3: {
        "window_log": 21,
        "chain_log": 16,
        "hash_log": 17,
        "search_log": 1,
        "min_match": 6,
        "target_length": 0,
        "strategy": zstandard.STRATEGY_DFAST,
    }
}


def _new_compressor(level: int, tuned: bool) -> zstandard.ZstdCompressor:
    params = _TUNED.get(level) if tuned else None
    if params is None:
        return zstandard.ZstdCompressor(level=level, write_content_size=True)
    cparams = zstandard.ZstdCompressionParameters(write_content_size=True, **params)
    return zstandard.ZstdCompressor(compression_params=cparams)


def _compressor(level: int, size: int) -> zstandard.ZstdCompressor:
    """This thread's compressor for ``level`` and an input of ``size`` bytes."""
    # ZstdCompressor objects are not thread-safe; keep one per thread, level and kind.
    cache: dict[tuple[int, bool], zstandard.ZstdCompressor] | None = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    key = (level, size >= TUNED_MIN)
    comp = cache.get(key)
    if comp is None:
        comp = cache[key] = _new_compressor(*key)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def compress(data: bytes | memoryview, level: int | None) -> tuple[int, bytes | memoryview]:
    """Returns ``(compression id, payload)``; incompressible data is kept raw.

    ``level=None`` disables compression.
    """
    if level is None or len(data) < MIN_COMPRESS:
        return COMP_NONE, data
    packed = _compressor(level, len(data)).compress(data)
    # Keep raw unless compression saves at least 1/32: decompressing costs time on restore.
    if len(packed) > len(data) - (len(data) >> 5):
        return COMP_NONE, data
    return COMP_ZSTD, packed


def decompress_into(comp_id: int, payload: bytes | memoryview, out: memoryview) -> None:
    """Decompress ``payload`` into ``out``, which must be exactly its size (the caller
    verifies the content against its id, which also rules out a longer frame)."""
    if comp_id != COMP_ZSTD:
        raise FormatError(f"unknown compression id {comp_id}")
    try:
        # A reader fed the whole frame at once decompresses straight into ``out``: as fast
        # as the one-shot call, with no plaintext object to allocate and page in.
        reader = _decompressor().stream_reader(payload, read_size=len(payload))
        n = 0
        while n < len(out):
            got = reader.readinto(out[n:])
            if not got:
                break
            n += got
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"compressed data is damaged: {exc}") from exc
    if n != len(out):
        raise IntegrityError(f"decompressed {n} bytes, expected {len(out)}")


def decompress(comp_id: int, payload: bytes | memoryview, raw_length: int | None = None) -> bytes:
    """The plain bytes of ``payload`` compressed with ``comp_id``; ``raw_length``, when known,
    is checked. Raises :class:`FormatError` for an unknown id, :class:`IntegrityError` for
    damaged data or a wrong length."""
    if comp_id == COMP_NONE:
        return bytes(payload)
    if comp_id == COMP_ZSTD:
        try:
            # Frames carry their content size (authenticated, inside the sealed message), so
            # the one-shot path applies; passing max_output_size would force the streaming
            # path, 2.5x slower here.
            data = _decompressor().decompress(payload)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"compressed data is damaged: {exc}") from exc
        if raw_length is not None and len(data) != raw_length:
            raise IntegrityError(f"decompressed {len(data)} bytes, expected {raw_length}")
        return data
    raise FormatError(f"unknown compression id {comp_id}")
