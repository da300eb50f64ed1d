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


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe; keep one per thread and level.
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
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
    packed = _compressor(level).compress(data)
    # Keep raw unless compression saves at least 1/32: decompressing costs time on restore.
    if len(packed) > len(data) - (len(data) >> 5):
        return COMP_NONE, data
    return COMP_ZSTD, packed


def decompress(comp_id: int, payload: bytes | memoryview, raw_length: int | None = None) -> bytes:
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
