"""Packs: many sealed blobs in one stored object, with a sealed header listing them.

Layout (docs/format.md, "Packs")::

    header 'S' 'H' 1 5 (4)
    blob 0 sealed | blob 1 sealed | ...          each sealed with AAD = blob id
    pack header sealed (AAD = b"safehold pack header")
    pack header length (u32 LE) | b"SHPE" (4)

The pack header's plaintext is::

    chain id (16) | count (u32 LE) | count x entry (45 bytes)
    entry = type (1) | offset (u32) | length (u32) | raw length (u32) | blob id (32)

Because each pack carries its own header, the index can be rebuilt from the packs alone.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from safehold.crypto.aead import OVERHEAD, Aead
from safehold.errors import FormatError
from safehold.ids import BlobId, ChainId
from safehold.repository.format import T_PACK, check_header, header

PACK_HEADER_AAD = b"safehold pack header"
TRAILER_MAGIC = b"SHPE"
TRAILER_LEN = 8
CHAIN_ID_LEN = 16
_ENTRY = struct.Struct("<BIII32s")
ENTRY_LEN = _ENTRY.size  # 45 bytes
_COUNT = struct.Struct("<I")
_TRAILER = struct.Struct("<I4s")
_START_LEN = len(header(T_PACK))


def pack_length(blobs_length: int, count: int) -> int:
    """The size of a finished pack holding ``count`` blobs of ``blobs_length`` sealed bytes."""
    return _START_LEN + blobs_length + CHAIN_ID_LEN + 4 + count * ENTRY_LEN + OVERHEAD + TRAILER_LEN


@dataclass(frozen=True, slots=True)
class PackEntry:
    """One blob in a pack: its type, where its sealed form sits (bytes), its plaintext length
    and id."""

    blob_type: int
    offset: int
    length: int
    raw_length: int
    blob_id: BlobId


class PackBuilder:
    """Collects sealed blobs for one pack. Not thread-safe: callers serialise ``add`` and
    ``reserve``; what they write through ``view`` may run in parallel.

    The pack is assembled in one buffer allocated up front (``capacity``), so adding a blob
    is a single copy into place, never a reallocation of everything before it.
    """

    def __init__(
        self, chain_id: ChainId, capacity: int = 1 << 20, *, buf: bytearray | None = None
    ) -> None:
        if len(chain_id) != CHAIN_ID_LEN:
            raise ValueError("chain ids are 16 bytes")
        self.chain_id = chain_id
        # A recycled buffer saves zeroing (and touching) a fresh one for every pack.
        self.buf = buf if buf is not None else bytearray(capacity)
        head = header(T_PACK)
        self.buf[: len(head)] = head
        self.size = len(head)
        self.entries: list[PackEntry] = []

    def _grow(self, end: int) -> None:
        if end > len(self.buf):
            self.buf.extend(bytes(max(end - len(self.buf), len(self.buf) // 2)))

    def _append(self, part: bytes | memoryview) -> None:
        end = self.size + len(part)
        self._grow(end)
        self.buf[self.size : end] = part
        self.size = end

    def add(
        self, blob_type: int, blob_id: BlobId, sealed: bytes | tuple[bytes, ...], raw_length: int
    ) -> PackEntry:
        """Append one sealed blob, given whole or as consecutive parts."""
        parts = (sealed,) if isinstance(sealed, bytes) else sealed
        start = self.size
        for part in parts:
            self._append(part)
        entry = PackEntry(blob_type, start, self.size - start, raw_length, blob_id)
        self.entries.append(entry)
        return entry

    def reserve(self, blob_type: int, blob_id: BlobId, length: int, raw_length: int) -> PackEntry:
        """Claim the next ``length`` bytes for one sealed blob, to be written through
        ``view(entry)`` before the pack is finished.

        The buffer grows if it must, which fails (BufferError) while a view is held: a
        caller that writes several blobs at once keeps ``room()`` in mind instead.
        """
        start = self.size
        self._grow(start + length)
        self.size = start + length
        entry = PackEntry(blob_type, start, length, raw_length, blob_id)
        self.entries.append(entry)
        return entry

    def view(self, entry: PackEntry) -> memoryview:
        """The bytes ``reserve`` set aside for ``entry``."""
        return memoryview(self.buf)[entry.offset : entry.offset + entry.length]

    def room(self) -> int:
        """Bytes left in the buffer before it would have to grow."""
        return len(self.buf) - self.size

    def __len__(self) -> int:
        return len(self.entries)

    def fits(self, sealed_length: int, limit: int) -> bool:
        """Whether one more blob keeps the finished pack (header included) within
        ``limit`` bytes; an empty pack takes any blob."""
        if not self.entries:
            return True
        blobs = self.size - _START_LEN + sealed_length
        return pack_length(blobs, len(self.entries) + 1) <= limit

    def finish(self, aead: Aead) -> memoryview:
        """Append the sealed header and trailer; returns the whole pack, a view of the builder's
        buffer (valid until the buffer is reused)."""
        plain = bytearray(self.chain_id)
        plain += _COUNT.pack(len(self.entries))
        for e in self.entries:
            plain += _ENTRY.pack(e.blob_type, e.offset, e.length, e.raw_length, e.blob_id)
        sealed = aead.seal(bytes(plain), PACK_HEADER_AAD)
        self._append(sealed)
        self._append(_TRAILER.pack(len(sealed), TRAILER_MAGIC))
        return memoryview(self.buf)[: self.size]


def parse_trailer(tail: bytes, pack_size: int, what: str) -> int:
    """Returns the sealed header's length from the last 8 bytes of a pack."""
    if len(tail) != TRAILER_LEN:
        raise FormatError(f"{what} is too short to be a pack")
    length, magic = _TRAILER.unpack(tail)
    if magic != TRAILER_MAGIC or length + TRAILER_LEN + 4 > pack_size:
        raise FormatError(f"{what} has a damaged pack trailer")
    return int(length)


def parse_header(aead: Aead, sealed: bytes, what: str) -> tuple[ChainId, list[PackEntry]]:
    """Opens a sealed pack header; returns ``(chain id, entries)``."""
    plain = aead.open(sealed, PACK_HEADER_AAD, what=f"{what} header")
    if len(plain) < CHAIN_ID_LEN + 4:
        raise FormatError(f"{what} header is truncated")
    chain_id = ChainId(plain[:CHAIN_ID_LEN])
    (count,) = _COUNT.unpack_from(plain, CHAIN_ID_LEN)
    start = CHAIN_ID_LEN + 4
    if len(plain) != start + count * ENTRY_LEN:
        raise FormatError(f"{what} header length does not match its entry count")
    entries = [PackEntry(*_ENTRY.unpack_from(plain, start + i * ENTRY_LEN)) for i in range(count)]
    return chain_id, entries


def check_pack_start(first: bytes, what: str) -> None:
    """Raise :class:`FormatError` unless ``first`` (a pack's first four bytes) is a pack header."""
    check_header(first, T_PACK, what)
