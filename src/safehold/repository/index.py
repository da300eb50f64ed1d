"""The index: which blob lives where, and index files that persist it.

Index file plaintext (sealed as object type 3, docs/format.md "Index files")::

    pack count (u32 LE)
    per pack: pack id (32) | chain id (16) | pack size (u32) | blob count (u32)
              | blob count x entry (45 bytes, the pack header's entry layout)

A blob may be stored in several packs (two writers raced, or two chains hold the same
content); the index remembers one location per chain, which is what deduplication inside
a chain and reading from any chain both need.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from safehold.errors import FormatError
from safehold.repository.pack import _ENTRY, ENTRY_LEN, PackEntry

_PACK = struct.Struct("<32s16sII")
_COUNT = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Location:
    pack_id: bytes
    blob_type: int
    offset: int
    length: int
    raw_length: int


@dataclass(frozen=True, slots=True)
class PackRecord:
    pack_id: bytes
    chain_id: bytes
    size: int
    entries: tuple[PackEntry, ...]


def encode_index(packs: Iterable[PackRecord]) -> bytes:
    packs = list(packs)
    out = bytearray(_COUNT.pack(len(packs)))
    for p in packs:
        out += _PACK.pack(p.pack_id, p.chain_id, p.size, len(p.entries))
        for e in p.entries:
            out += _ENTRY.pack(e.blob_type, e.offset, e.length, e.raw_length, e.blob_id)
    return bytes(out)


def decode_index(raw: bytes, what: str) -> list[PackRecord]:
    try:
        (count,) = _COUNT.unpack_from(raw, 0)
        pos = _COUNT.size
        packs = []
        for _ in range(count):
            pack_id, chain_id, size, n = _PACK.unpack_from(raw, pos)
            pos += _PACK.size
            entries = tuple(
                PackEntry(*_ENTRY.unpack_from(raw, pos + i * ENTRY_LEN)) for i in range(n)
            )
            pos += n * ENTRY_LEN
            packs.append(PackRecord(pack_id, chain_id, size, entries))
    except struct.error as exc:
        raise FormatError(f"{what} is truncated") from exc
    if pos != len(raw):
        raise FormatError(f"{what} has {len(raw) - pos} trailing bytes")
    return packs


class Index:
    """In-memory lookup of blob locations. Additions are safe under the GIL from any thread
    (single dict operations); readers never see a half-added pack's blobs as missing data
    because packs are added only after they are stored."""

    def __init__(self) -> None:
        self.packs: dict[bytes, PackRecord] = {}
        self._blobs: dict[bytes, Location] = {}
        # Locations of blobs whose first-seen copy is in another chain's pack.
        self._other: dict[bytes, list[Location]] = {}

    def add_pack(self, rec: PackRecord) -> None:
        if rec.pack_id in self.packs:
            return
        self.packs[rec.pack_id] = rec
        blobs = self._blobs
        for e in rec.entries:
            loc = Location(rec.pack_id, e.blob_type, e.offset, e.length, e.raw_length)
            first = blobs.get(e.blob_id)
            if first is None:
                blobs[e.blob_id] = loc
            elif self.packs[first.pack_id].chain_id != rec.chain_id:
                self._other.setdefault(e.blob_id, []).append(loc)

    def remove_pack(self, pack_id: bytes) -> None:
        """Forget a pack (prune); blobs fall back to their copies in other packs."""
        rec = self.packs.pop(pack_id, None)
        if rec is None:
            return
        for e in rec.entries:
            loc = self._blobs.get(e.blob_id)
            if loc is not None and loc.pack_id == pack_id:
                del self._blobs[e.blob_id]
            others = self._other.get(e.blob_id)
            if others:
                others[:] = [o for o in others if o.pack_id != pack_id]
                if not others:
                    del self._other[e.blob_id]
            if e.blob_id not in self._blobs:
                self._reinstate(e.blob_id)

    def _reinstate(self, blob_id: bytes) -> None:
        others = self._other.pop(blob_id, None)
        if others:
            self._blobs[blob_id] = others[0]
            if len(others) > 1:
                self._other[blob_id] = others[1:]
            return
        for rec in self.packs.values():
            for e in rec.entries:
                if e.blob_id == blob_id:
                    self._blobs[blob_id] = Location(
                        rec.pack_id, e.blob_type, e.offset, e.length, e.raw_length
                    )
                    return

    def lookup(self, blob_id: bytes) -> Location | None:
        return self._blobs.get(blob_id)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def has_in_chain(self, blob_id: bytes, chain_id: bytes) -> bool:
        loc = self._blobs.get(blob_id)
        if loc is None:
            return False
        if self.packs[loc.pack_id].chain_id == chain_id:
            return True
        return any(self.packs[o.pack_id].chain_id == chain_id for o in self._other.get(blob_id, ()))

    def chain_of(self, pack_id: bytes) -> bytes:
        return self.packs[pack_id].chain_id

    def blob_count(self) -> int:
        return len(self._blobs)

    def blob_ids(self) -> Iterator[bytes]:
        return iter(self._blobs)
