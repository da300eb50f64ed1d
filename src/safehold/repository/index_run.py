"""A sorted run: the compact, immutable bulk of the in-memory index.

One record per (blob, pack) pair, kept in three parallel buffers sorted by blob id, with
records of equal ids in the order they were added (the first is the first-seen copy)::

    ids    bytes        32 bytes per record: the blob id
    meta   array('I')   4 x u32 per record: pack number | offset | length | raw length
    types  bytes        1 byte per record: the blob type

That is 49 bytes a record (plus the directory below), against about 200 for a dict entry
holding a location object.
A directory of ``2**bits`` u32 (``bits`` chosen so that a bucket holds 2 to 4 records on
average, 1 to 2 bytes a record; blob ids are keyed hashes, so their leading bits are
uniform) maps the leading ``bits`` bits of an id to the first record of its bucket, so a
lookup is one ``bytes.find`` over about a hundred bytes, done in C. A run is never changed in place:
:meth:`SortedRun.merged` builds a new one, which lets readers in other threads keep using
the old one without locks.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate, repeat
from operator import add

from safehold.ids import BlobId

__all__ = ["FIELDS", "ID_LEN", "Entry", "Fields", "SortedRun", "pack_entry", "unpack_entry"]

ID_LEN = 32
FIELDS = 4  # u32 per record in ``meta``
_META = struct.Struct(f"={FIELDS}I")
_TYPE_BYTES = [bytes((i,)) for i in range(256)]
if array("I").itemsize != 4:  # pragma: no cover - every platform CPython supports today
    raise ImportError("safehold's index needs a 4-byte array('I')")

# One location as fields: (pack number, type, offset, length, raw length).
Fields = tuple[int, int, int, int, int]

# One location as the overlay holds it: the fields packed into one integer, pack number in
# the low 32 bits, then type (8), offset, length and raw length (32 each). A first backup of
# 200,000 small files holds one per blob until the overlay is merged: an int of 136 bits
# is 48 bytes, where a tuple of the five took 80 and its three large ints 96 more.
Entry = int
PN_MASK = 0xFFFFFFFF  # ``entry & PN_MASK`` is the entry's pack number
_U32 = 0xFFFFFFFF


def pack_entry(pn: int, blob_type: int, offset: int, length: int, raw_length: int) -> Entry:
    """The overlay's form of a location; ValueError for a field wider than the run's (u32,
    and a byte for the type), which would otherwise spill into its neighbour."""
    wide = pn | offset | length | raw_length  # negative if any one is
    if not 0 <= wide <= _U32 or not 0 <= blob_type <= 0xFF:
        raise ValueError("an index entry's field is out of range")
    return pn | blob_type << 32 | offset << 40 | length << 72 | raw_length << 104


def unpack_entry(e: Entry) -> Fields:
    """(pack number, type, offset, length, raw length) of an overlay entry."""
    return (e & _U32, e >> 32 & 0xFF, e >> 40 & _U32, e >> 72 & _U32, e >> 104)


def _bits_for(n: int) -> int:
    return max(1, min(24, (n >> 2).bit_length()))


def _prefixes(ids: bytes) -> array[int]:
    """The leading 32 bits of every id, as integers (a C-speed strided copy)."""
    out = array("I", memoryview(ids).cast("I")[:: ID_LEN // 4].tobytes())
    if sys.byteorder == "little":
        out.byteswap()  # big-endian order is the ids' sort order
    return out


def _directory(ids: bytes, n: int, bits: int) -> array[int]:
    step = 1 << (32 - bits)
    d = array("I", map(bisect_left, repeat(_prefixes(ids), 1 << bits), range(0, 1 << 32, step)))
    d.append(n)
    return d


class SortedRun:
    """The index's records sorted by blob id, in flat buffers (docs/architecture.md, "The index
    is a compact sorted array"): never changed once built, so readers need no lock."""

    __slots__ = ("bits", "dir", "distinct", "ids", "meta", "n", "shift", "types")

    def __init__(
        self,
        ids: bytes,
        meta: array[int],
        types: bytes,
        distinct: int,
        directory: array[int] | None = None,
    ) -> None:
        self.ids = ids
        self.meta = meta
        self.types = types
        self.n = len(types)
        self.distinct = distinct  # how many different ids the run holds
        self.bits = _bits_for(self.n)
        self.shift = 32 - self.bits
        self.dir = directory if directory is not None else _directory(ids, self.n, self.bits)

    @classmethod
    def empty(cls) -> SortedRun:
        """A run with no records."""
        return cls(b"", array("I"), b"", 0)

    def nbytes(self) -> int:
        """Bytes the run's buffers hold."""
        return len(self.ids) + len(self.meta) * 4 + len(self.types) + len(self.dir) * 4

    # --- reading ---------------------------------------------------------------------------

    def first(self, blob_id: bytes) -> int:
        """Index of the first record of ``blob_id``, or -1."""
        if len(blob_id) != ID_LEN:
            return -1  # a damaged tree's short id must not match part of a record
        k = int.from_bytes(blob_id[:4], "big") >> self.shift
        d = self.dir
        hi = d[k + 1] << 5
        ids = self.ids
        # One search in C over the bucket (measured faster than comparing each record
        # from Python, even at 2 to 4 records a bucket).
        pos = ids.find(blob_id, d[k] << 5, hi)
        # A match across two records' boundary is possible in principle; skip it.
        while pos & 31:
            if pos < 0:
                return -1
            pos = ids.find(blob_id, pos + 1, hi)
        return pos >> 5

    def same(self, i: int, blob_id: bytes) -> bool:
        """Whether record ``i`` exists and has the id ``blob_id``."""
        return i < self.n and self.ids.startswith(blob_id, i << 5)

    def id_at(self, i: int) -> BlobId:
        """The id of record ``i``."""
        return BlobId(self.ids[i << 5 : (i + 1) << 5])

    def entry(self, i: int) -> Fields:
        """Record ``i`` as (pack number, type, offset, length, raw length)."""
        m = self.meta
        j = i * FIELDS
        return (m[j], self.types[i], m[j + 1], m[j + 2], m[j + 3])

    def distinct_ids(self) -> Iterator[BlobId]:
        """Every distinct id, in order (records of one id are adjacent)."""
        last = b""
        for i in range(self.n):
            b = self.id_at(i)
            if b != last:
                yield b
                last = b

    # --- building --------------------------------------------------------------------------

    def without(self, alive: Sequence[int]) -> SortedRun:
        """A copy without the records of packs that are no longer alive."""
        meta, ids, types = self.meta, self.ids, self.types
        keep = [i for i in range(self.n) if alive[meta[i * FIELDS]]]
        mv_meta = memoryview(meta).cast("B")
        new_ids, new_meta, new_types = bytearray(), array("I"), bytearray()
        # Copy runs of consecutive kept records in one slice each.
        start = prev = -2
        for i in [*keep, -1]:
            if i == prev + 1:
                prev = i
                continue
            if start >= 0:
                new_ids += ids[start << 5 : (prev + 1) << 5]
                new_meta.frombytes(mv_meta[start * FIELDS * 4 : (prev + 1) * FIELDS * 4])
                new_types += types[start : prev + 1]
            start = prev = i
        distinct, last = 0, b""
        for i in keep:
            b = ids[i << 5 : (i + 1) << 5]
            if b != last:
                distinct, last = distinct + 1, b
        return SortedRun(bytes(new_ids), new_meta, bytes(new_types), distinct)

    def merged(
        self, keys: list[BlobId], first: dict[BlobId, Entry], more: dict[BlobId, list[Entry]]
    ) -> SortedRun:
        """A new run holding this run's records and the overlay's: ``keys`` sorted, each
        id's entries ``first[id]`` then ``more[id]`` (in the order they were added, all
        after the run's own records of that id)."""
        if not keys:
            return self
        if not self.n and not more:
            return SortedRun.of_overlay(keys, first)
        return self._merged(keys, first, more)

    @classmethod
    def of_overlay(cls, keys: list[BlobId], first: dict[BlobId, Entry]) -> SortedRun:
        """The run of an overlay of one entry an id (``keys`` sorted), built without a
        Python step per record beyond one list comprehension: what an index's first merge
        is, e.g. at the end of a first backup into a new repository (``merged`` loops over
        the records in Python, 1-3 µs each)."""
        entries = list(map(unpack_entry, map(first.__getitem__, keys)))
        meta = array("I", [v for e in entries for v in (e[0], e[2], e[3], e[4])])
        types = bytes([e[1] for e in entries])
        return cls(b"".join(keys), meta, types, len(keys))

    def _merged(
        self, keys: list[BlobId], first: dict[BlobId, Entry], more: dict[BlobId, list[Entry]]
    ) -> SortedRun:
        ids, mv_meta, types = self.ids, memoryview(self.meta).cast("B"), self.types
        id_parts: list[bytes] = []
        meta_parts: list[bytes | memoryview] = []
        type_parts: list[bytes] = []
        pack = _META.pack
        type_bytes = _TYPE_BYTES
        d = self.dir
        shift = self.shift
        delta = [0] * (len(d) + 1)
        prev = added = distinct = 0
        rec = FIELDS * 4
        for blob_id in keys:
            k = int.from_bytes(blob_id[:4], "big") >> shift
            lo = j = d[k]
            hi = d[k + 1]
            # Buckets hold a handful of records: a scan beats a bisect's function calls.
            while j < hi and ids[j << 5 : (j + 1) << 5] <= blob_id:
                j += 1
            if j > prev:
                id_parts.append(ids[prev << 5 : j << 5])
                meta_parts.append(mv_meta[prev * rec : j * rec])
                type_parts.append(types[prev:j])
                prev = j
            entries = [first[blob_id], *more.get(blob_id, ())]
            for pn, blob_type, offset, length, raw_length in map(unpack_entry, entries):
                id_parts.append(blob_id)
                meta_parts.append(pack(pn, offset, length, raw_length))
                type_parts.append(type_bytes[blob_type])
            added += len(entries)
            distinct += j == lo or not ids.startswith(blob_id, (j - 1) << 5)
            delta[k + 1] += len(entries)
        id_parts.append(ids[prev << 5 :])
        meta_parts.append(mv_meta[prev * rec :])
        type_parts.append(types[prev:])
        new_ids = b"".join(id_parts)
        new_meta = array("I")
        new_meta.frombytes(b"".join(meta_parts))
        new_types = b"".join(type_parts)
        directory = None
        if _bits_for(self.n + added) == self.bits:
            # Same bucket layout: shift each bucket start by the records added before it.
            directory = array("I", map(add, d, accumulate(delta)))
        return SortedRun(new_ids, new_meta, new_types, self.distinct + distinct, directory)
