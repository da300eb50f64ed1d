"""The index: which blob lives where, and index files that persist it.

Index file plaintext (sealed as object type 3, docs/format.md "Index files")::

    pack count (u32 LE)
    per pack: pack id (32) | chain id (16) | pack size (u32) | blob count (u32)
              | blob count x entry (45 bytes, the pack header's entry layout)

A blob may be stored in several packs (two writers raced, or two chains hold the same
content); the index remembers one location per chain, which is what deduplication inside
a chain and reading from any chain both need.

In memory, the index keeps every (blob, pack) pair in a compact sorted run
(:mod:`safehold.repository.index_run`, about 50 bytes a blob instead of a dict's ~200),
plus a small dict of recent additions; ``Index.packs`` rebuilds a pack's record on access.
"""

from __future__ import annotations

import struct
import sys
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter

from safehold.errors import FormatError
from safehold.ids import BlobId, ChainId, HexId, PackId
from safehold.repository.index_run import (
    FIELDS,
    ID_LEN,
    PN_MASK,
    Entry,
    SortedRun,
    _bits_for,
    pack_entry,
    unpack_entry,
)
from safehold.repository.pack import _ENTRY, ENTRY_LEN, PackEntry

__all__ = [
    "Index",
    "IndexLoader",
    "Location",
    "PackRecord",
    "decode_index",
    "decode_sections",
    "encode_index",
    "encode_section",
    "index_file",
]

_PACK = struct.Struct("<32s16sII")
_COUNT = struct.Struct("<I")
_ID = slice(0, ID_LEN)  # a loader key's blob id
_JOIN = 4096  # loader keys joined at a time


@dataclass(frozen=True, slots=True)
class Location:
    """Where one blob is stored: its pack, type, and the byte range of its sealed form."""

    pack_id: PackId
    blob_type: int
    offset: int
    length: int
    raw_length: int


@dataclass(frozen=True, slots=True)
class PackRecord:
    """One pack as an index file lists it: its id, chain, stored size and blob entries."""

    pack_id: PackId
    chain_id: ChainId
    size: int
    entries: tuple[PackEntry, ...]


def encode_section(rec: PackRecord) -> bytes:
    """One pack's part of an index file: its header, then its entries (docs/format.md,
    "Index files"). A backup keeps these for the index file it writes at the end, 45 bytes
    a blob, instead of the pack records (a :class:`PackEntry` and its integers: 160)."""
    out = bytearray(_PACK.pack(rec.pack_id, rec.chain_id, rec.size, len(rec.entries)))
    pack = _ENTRY.pack
    for e in rec.entries:
        out += pack(e.blob_type, e.offset, e.length, e.raw_length, e.blob_id)
    return bytes(out)


def index_file(sections: list[bytes]) -> bytes:
    """The plaintext of an index file made of these packs' sections."""
    return _COUNT.pack(len(sections)) + b"".join(sections)


def encode_index(packs: Iterable[PackRecord]) -> bytes:
    """The plaintext of an index file listing ``packs`` (docs/format.md, "Index files")."""
    return index_file([encode_section(p) for p in packs])


def _decode_section(raw: bytes | memoryview, pos: int) -> tuple[PackRecord, int]:
    """The pack record whose section starts at ``pos``, and where the next one starts;
    struct.error if ``raw`` ends before it does."""
    pack_id, chain_id, size, n = _PACK.unpack_from(raw, pos)
    pos += _PACK.size
    entries = tuple(PackEntry(*_ENTRY.unpack_from(raw, pos + i * ENTRY_LEN)) for i in range(n))
    return PackRecord(pack_id, chain_id, size, entries), pos + n * ENTRY_LEN


def decode_sections(sections: Iterable[bytes]) -> list[PackRecord]:
    """The pack records of sections made by :func:`encode_section`."""
    return [_decode_section(section, 0)[0] for section in sections]


def decode_index(raw: bytes, what: str) -> list[PackRecord]:
    """The packs an index file's plaintext lists; raises :class:`FormatError` naming ``what``
    if it is truncated or malformed."""
    try:
        (count,) = _COUNT.unpack_from(raw, 0)
        pos = _COUNT.size
        packs = []
        for _ in range(count):
            rec, pos = _decode_section(raw, pos)
            packs.append(rec)
    except struct.error as exc:
        raise FormatError(f"{what} is truncated") from exc
    if pos != len(raw):
        raise FormatError(f"{what} has {len(raw) - pos} trailing bytes")
    return packs


# Index state (Index.to_bytes): pack count, chain count, record count, distinct ids.
_STATE_HEAD = struct.Struct("<IIII")


def _le(a: array[int]) -> bytes:
    """An array's bytes in little-endian order, whatever this machine's order is."""
    if sys.byteorder == "little":
        return a.tobytes()
    b = array(a.typecode, a)
    b.byteswap()
    return b.tobytes()


def _le_view(a: array[int]) -> bytes | memoryview:
    """:func:`_le` without a copy where this machine is little-endian (a view of ``a``,
    which the caller releases)."""
    return memoryview(a) if sys.byteorder == "little" else _le(a)


def _from_le(typecode: str, raw: bytes | memoryview) -> array[int]:
    a = array(typecode)
    if len(raw) % a.itemsize:
        raise FormatError("index state is truncated")
    a.frombytes(raw)
    if sys.byteorder != "little":
        a.byteswap()
    return a


@dataclass(slots=True)
class _Columns:
    """Index-file records in load order: what a sorted run is built from. ``keys`` holds each
    blob's id followed by its record number (big-endian u32), so that sorting the keys sorts
    by id and keeps copies of one id in load order, with no list of positions beside them."""

    keys: list[bytes]
    meta: array[int]
    types: bytearray


class IndexLoader:
    """Builds an :class:`Index` from whole index files without a Python object per blob.

    Loading through :meth:`Index.add_pack` holds every record in the overlay (~170 bytes a
    blob) until a merge; a repository's index is loaded by every command, so its peak
    counted in every command's peak memory. Here each file is checked whole, then its
    records go into columns, and :meth:`finish` sorts them once into the run.
    """

    def __init__(self) -> None:
        self._index = Index()
        self._cols = _Columns([], array("I"), bytearray())

    def add_file(self, raw: bytes, what: str) -> list[PackId]:
        """Add one index file's packs; a damaged file raises and adds nothing. Returns the
        ids of the packs the file lists (those listed before by another file too)."""
        packs: list[tuple[PackId, ChainId, int, int, int]] = []  # id, chain, size, start, count
        try:
            (count,) = _COUNT.unpack_from(raw, 0)
            pos = _COUNT.size
            for _ in range(count):
                pack_id, chain_id, size, n = _PACK.unpack_from(raw, pos)
                pos += _PACK.size
                packs.append((pack_id, chain_id, size, pos, n))
                pos += n * ENTRY_LEN
        except struct.error as exc:
            raise FormatError(f"{what} is truncated") from exc
        if pos != len(raw):
            raise FormatError(f"{what} has {len(raw) - pos} trailing bytes")
        index, cols = self._index, self._cols
        keys, meta, types = cols.keys, cols.meta, cols.types
        record = len(keys)
        for pack_id, chain_id, size, start, n in packs:
            if pack_id in index._pack_no:
                continue  # listed by two index files (prune rewrote one): keep the first
            pn = index._pack_no[pack_id] = index._new_pack(pack_id, chain_id, size)
            region = memoryview(raw)[start : start + n * ENTRY_LEN]
            for blob_type, offset, length, raw_length, blob_id in _ENTRY.iter_unpack(region):
                keys.append(blob_id + record.to_bytes(4, "big"))
                record += 1
                meta.extend((pn, offset, length, raw_length))
                types.append(blob_type)
        return [p[0] for p in packs]

    def finish(self) -> Index:
        """The index of every file added, its records sorted once into the run.

        Sorting the keys and taking them apart with strided slices (in C) keeps the peak at
        the keys: sorting positions by a key function, as before, held the ids, the
        positions as Python ints and the keys' list at once, 31 MiB of Python objects above
        the columns for 200,000 blobs (a check of that many small files)."""
        index, cols = self._index, self._cols
        self._cols = _Columns([], array("I"), bytearray())
        n = len(cols.keys)
        if not n:
            return index
        keys = cols.keys
        keys.sort()
        first = map(itemgetter(_ID), keys)
        distinct = 1 + sum(map(bytes.__ne__, first, map(itemgetter(_ID), islice(keys, 1, None))))
        # Joined a slice at a time from the end, each slice's keys freed as it is copied:
        # bytes.join keeps a 80-byte buffer record per item, 16 MB for 200,000 keys at once.
        parts: list[bytes] = []
        while keys:
            parts.append(b"".join(keys[-_JOIN:]))
            del keys[-_JOIN:]
        parts.reverse()
        joined = b"".join(parts)
        del parts
        step = ID_LEN + 4
        ids = bytearray(n * ID_LEN)
        for k in range(ID_LEN):
            ids[k::ID_LEN] = joined[k::step]
        order_le = bytearray(n * 4)  # record numbers, big-endian in the keys
        for k in range(4):
            order_le[k::4] = joined[ID_LEN + 3 - k :: step]
        del joined
        order = _from_le("I", memoryview(order_le))
        m = cols.meta
        meta = array("I", bytes(n * FIELDS * 4))
        for dst, src in enumerate(order):
            j, k = dst * FIELDS, src * FIELDS
            meta[j : j + FIELDS] = m[k : k + FIELDS]
        types = bytes(map(cols.types.__getitem__, order))
        index._run = SortedRun(bytes(ids), meta, types, distinct)
        return index


class Index:
    """In-memory lookup of blob locations, in about 50 bytes a blob (see
    :mod:`safehold.repository.index_run`).

    Recently added packs sit in a small dict (the overlay) and are merged into the sorted
    run once it holds ``merge_at`` records, so adding a pack costs a few dict operations.
    Packs are interned: records name a pack by number, and a removed pack's number is
    marked dead (its records are dropped at the next merge). ``lookup`` returns the first
    copy, in the order packs were added, whose pack is still present.

    Thread safety: writers (``add_pack``, ``remove_pack``, merges) hold a lock; readers
    take none. A merge publishes the new run before it empties the overlay, and readers
    read the overlay before the run, so a reader racing a merge sees every blob.
    """

    def __init__(self, *, merge_at: int | None = None) -> None:
        self._lock = threading.Lock()
        self._merge_at = merge_at
        self._deferred = 0  # the overlay's size before a merge while merges are deferred
        self._pack_ids: list[PackId] = []  # pack number -> pack id
        self._pack_no: dict[PackId, int] = {}  # present pack id -> pack number
        self._pack_chain = array("I")  # pack number -> chain number
        self._pack_size = array("Q")
        self._alive = bytearray()  # pack number -> 1 while present
        self._chains: list[ChainId] = []
        self._chain_no: dict[ChainId, int] = {}
        self._run = SortedRun.empty()
        # The overlay: each id's first entry added since the last merge, and any later ones
        # (the same blob in another pack: rare, so kept apart to keep the common case small).
        self._first: dict[BlobId, Entry] = {}
        self._more: dict[BlobId, list[Entry]] = {}
        self._overlay_len = 0
        # Packs whose entries are in the overlay: their blob ids, in the pack's order (the
        # rest of their records is in the overlay's entries).
        self._recent: dict[int, tuple[BlobId, ...]] = {}
        self._dead_in_run = 0
        self._groups: _PackGroups | None = None
        self._groups_lock = threading.Lock()
        self.packs: Mapping[PackId, PackRecord] = _PackView(self)

    # --- writing ---------------------------------------------------------------------------

    def _new_pack(self, pack_id: PackId, chain_id: ChainId, size: int) -> int:
        """Intern a pack; returns its number. The caller holds the lock (or owns the index)
        and has checked that the pack is not present."""
        pn = len(self._pack_ids)
        cn = self._chain_no.get(chain_id)
        if cn is None:
            cn = self._chain_no[chain_id] = len(self._chains)
            self._chains.append(chain_id)
        self._pack_ids.append(pack_id)
        self._pack_chain.append(cn)
        self._pack_size.append(size)
        self._alive.append(1)  # before any record names the pack
        return pn

    def add_pack(self, rec: PackRecord) -> None:
        """Add a pack's blobs (a pack already present is left as it is); thread-safe."""
        self._add(
            rec.pack_id,
            rec.chain_id,
            rec.size,
            [(e.blob_id, e.blob_type, e.offset, e.length, e.raw_length) for e in rec.entries],
        )

    def add_section(self, section: bytes) -> None:
        """:meth:`add_pack` of the pack whose index section (:func:`encode_section`) this
        is, without making its record; thread-safe."""
        pack_id, chain_id, size, n = _PACK.unpack_from(section, 0)
        body = memoryview(section)[_PACK.size :]
        if len(body) != n * ENTRY_LEN:
            raise FormatError("an index section's length does not match its blob count")
        self._add(
            PackId(pack_id),
            ChainId(chain_id),
            size,
            [(BlobId(b), t, o, ln, raw) for t, o, ln, raw, b in _ENTRY.iter_unpack(body)],
        )

    def _add(
        self,
        pack_id: PackId,
        chain_id: ChainId,
        size: int,
        blobs: list[tuple[BlobId, int, int, int, int]],
    ) -> None:
        """Add a pack of ``blobs`` (id, type, offset, length, raw length), in its order."""
        with self._lock:
            if pack_id in self._pack_no:
                return
            pn = self._new_pack(pack_id, chain_id, size)
            first, more = self._first, self._more
            for blob_id, blob_type, offset, length, raw_length in blobs:
                entry = pack_entry(pn, blob_type, offset, length, raw_length)
                had = len(first)
                first.setdefault(blob_id, entry)
                if len(first) == had:  # another copy of a blob the overlay holds
                    more.setdefault(blob_id, []).append(entry)
            self._overlay_len += len(blobs)
            self._recent[pn] = tuple(b[0] for b in blobs)
            self._pack_no[pack_id] = pn
            if self._overlay_len >= self._threshold():
                self._merge()

    def remove_pack(self, pack_id: PackId) -> None:
        """Forget a pack (prune); blobs fall back to their copies in other packs."""
        with self._lock:
            pn = self._pack_no.pop(pack_id, None)
            if pn is None:
                return
            self._alive[pn] = 0
            ids = self._recent.pop(pn, None)
            if ids is None:
                self._dead_in_run += 1
                self._groups = None
                return
            first, more = self._first, self._more
            for blob_id in ids:
                rest = more.get(blob_id, [])
                rest[:] = [x for x in rest if x & PN_MASK != pn]
                if not rest:
                    more.pop(blob_id, None)
                entry = first.get(blob_id)
                if entry is not None and entry & PN_MASK == pn:
                    if rest:
                        first[blob_id] = rest.pop(0)
                        if not rest:
                            del more[blob_id]
                    else:
                        del first[blob_id]
            self._overlay_len -= len(ids)

    def _threshold(self) -> int:
        if self._merge_at is not None:
            return self._merge_at
        # A merge costs a pass over the overlay plus one copy of the run; the overlay costs
        # ~170 bytes a record (the blob id, a dict slot, the packed entry and the id's place
        # in its pack's list). A 32nd of the run keeps the overlay near 10 bytes a blob and the
        # copying near 1.5 KiB per record added.
        return max(1 << 16, self._deferred, self._run.n >> 5)

    @contextmanager
    def merges_deferred(self, records: int = 1 << 18) -> Iterator[None]:
        """Merge the overlay only once it holds ``records`` (or a 32nd of the run) while
        inside: a backup adds a record a blob and looks each one up, and every merge loops
        over the overlay in Python under the lock the savers wait for. A first backup of
        200,000 small files merged three times; deferred, the overlay costs at most about
        ``records`` x 170 bytes (45 MB) before it is merged anyway."""
        with self._lock:
            before, self._deferred = self._deferred, records
        try:
            yield
        finally:
            with self._lock:
                self._deferred = before

    def _merge(self) -> None:
        """Fold the overlay and the removals into a new run. The caller holds the lock."""
        run = self._run
        if self._dead_in_run:
            run = run.without(self._alive)
            self._dead_in_run = 0
        run = run.merged(sorted(self._first), self._first, self._more)
        self._run = run  # published before the overlay empties: see the class docstring
        self._first = {}
        self._more = {}
        self._overlay_len = 0
        self._recent = {}
        self._groups = None

    def flush(self) -> None:
        """Merge everything into the sorted run (for whole-index passes and measurements)."""
        with self._lock:
            if self._first or self._dead_in_run:
                self._merge()

    def copy(self) -> Index:
        """An independent index with the same packs; the sorted run is shared, not copied."""
        with self._lock:
            new = Index(merge_at=self._merge_at)
            new._pack_ids = list(self._pack_ids)
            new._pack_no = dict(self._pack_no)
            new._pack_chain = array("I", self._pack_chain)
            new._pack_size = array("Q", self._pack_size)
            new._alive = bytearray(self._alive)
            new._chains = list(self._chains)
            new._chain_no = dict(self._chain_no)
            new._run = self._run
            new._first = dict(self._first)
            new._more = {k: list(v) for k, v in self._more.items()}
            new._overlay_len = self._overlay_len
            new._recent = dict(self._recent)
            new._dead_in_run = self._dead_in_run
            return new

    # --- reading ---------------------------------------------------------------------------

    def lookup(self, blob_id: BlobId) -> Location | None:
        """Where the first live copy of ``blob_id`` is, or None."""
        first, more = self._first, self._more  # before the run: see the class docstring
        run = self._run
        alive = self._alive
        if run.n:
            i = run.first(blob_id)
            if i >= 0:
                meta = run.meta
                while True:
                    j = i * FIELDS
                    pn = meta[j]
                    if alive[pn]:
                        return Location(
                            self._pack_ids[pn], run.types[i], meta[j + 1], meta[j + 2], meta[j + 3]
                        )
                    i += 1
                    if not run.same(i, blob_id):
                        break
        entry = first.get(blob_id)
        if entry is None:
            return None
        if not alive[entry & PN_MASK]:
            entry = next((e for e in more.get(blob_id, ()) if alive[e & PN_MASK]), None)
            if entry is None:
                return None
        pn, blob_type, offset, length, raw_length = unpack_entry(entry)
        return Location(self._pack_ids[pn], blob_type, offset, length, raw_length)

    def __contains__(self, blob_id: BlobId) -> bool:
        return self.lookup(blob_id) is not None

    def locate(
        self, blob_id: BlobId, chain_id: ChainId, marks: bytearray | None = None
    ) -> tuple[Location | None, bool]:
        """``(lookup(blob_id), has_in_chain(blob_id, chain_id))`` with one search of the
        run when the overlay is empty (a loaded index, as check walks it).

        ``marks`` (from :meth:`run_marks`): the byte of a blob found (a location returned)
        is set to 1 there, one byte per distinct blob, so that the caller counts the blobs
        it met without a set of their ids (check: 20 MB for 200,000 files); those not found
        are the caller's to count."""
        first = self._first  # before the run: see the class docstring
        run = self._run
        if first or not run.n:
            return self.lookup(blob_id), self.has_in_chain(blob_id, chain_id)
        i = run.first(blob_id)
        if i < 0:
            return None, False
        start = i  # the first record of this id: one mark per distinct id
        cn = self._chain_no.get(chain_id, -1)
        alive, chain, meta = self._alive, self._pack_chain, run.meta
        loc: Location | None = None
        in_chain = False
        while True:
            j = i * FIELDS
            pn = meta[j]
            if alive[pn]:
                if loc is None:
                    loc = Location(
                        self._pack_ids[pn], run.types[i], meta[j + 1], meta[j + 2], meta[j + 3]
                    )
                if chain[pn] == cn:
                    in_chain = True
                    break
            i += 1
            if not run.same(i, blob_id):
                break
        if marks is not None and loc is not None:
            marks[start] = 1
        return loc, in_chain

    def has_in_chain(self, blob_id: BlobId, chain_id: ChainId) -> bool:
        """Whether a live pack of ``chain_id`` holds ``blob_id`` (deduplication is per chain)."""
        cn = self._chain_no.get(chain_id)
        if cn is None:
            return False
        first, more = self._first, self._more
        run = self._run
        alive, chain = self._alive, self._pack_chain
        if run.n:
            i = run.first(blob_id)
            if i >= 0:
                meta = run.meta
                while True:
                    pn = meta[i * FIELDS]
                    if alive[pn] and chain[pn] == cn:
                        return True
                    i += 1
                    if not run.same(i, blob_id):
                        break
        entry = first.get(blob_id)
        if entry is None:
            return False
        pn = entry & PN_MASK
        if alive[pn] and chain[pn] == cn:
            return True
        return any(alive[e & PN_MASK] and chain[e & PN_MASK] == cn for e in more.get(blob_id, ()))

    def has_all_in_chain(self, hex_ids: list[HexId], chain_id: ChainId) -> bool:
        """Whether every blob of ``hex_ids`` (hex) is stored in a live pack of the chain:
        :meth:`has_in_chain` for each, with the sorted run searched inline. A re-backup
        asks this for every unchanged file while its walk holds the interpreter lock, which
        the readers then wait for: the calls per blob were 7 % of a 5 % re-backup."""
        cn = self._chain_no.get(chain_id)
        if cn is None:
            return not hex_ids
        run = self._run  # read before the overlay's fallback below, as in has_in_chain
        ids, meta, directory, shift = run.ids, run.meta, run.dir, run.shift
        alive, chain = self._alive, self._pack_chain
        for hex_id in hex_ids:
            blob_id = bytes.fromhex(hex_id)
            if run.n and len(blob_id) == ID_LEN:
                k = int.from_bytes(blob_id[:4], "big") >> shift
                hi = directory[k + 1] << 5
                pos = ids.find(blob_id, directory[k] << 5, hi)
                while pos & 31 and pos >= 0:  # (a match across two records)
                    pos = ids.find(blob_id, pos + 1, hi)
                if pos >= 0:
                    pn = meta[(pos >> 5) * FIELDS]
                    if alive[pn] and chain[pn] == cn:
                        continue  # its first copy: the common case
            if not self.has_in_chain(BlobId(blob_id), chain_id):
                return False
        return True

    def run_marks(self) -> bytearray | None:
        """Zeros, one per record of the sorted run, for :meth:`locate` to mark the blobs it
        finds; ``marks.count(1)`` is then how many distinct blobs were found. Valid while
        the index does not change; None while recent additions sit outside the run."""
        return None if self._first else bytearray(self._run.n)

    def chain_count(self) -> int:
        """How many chains the index's packs belong to (removed packs' included)."""
        return len(self._chains)

    def pack_summaries(self) -> dict[PackId, tuple[int, int]]:
        """Each present pack's stored size and blob count, without rebuilding its record
        (``packs.items()`` builds every blob's entry: 36 MB at once for 200,000 blobs)."""
        self.flush()
        counts = Counter(self._run.meta[0::FIELDS])  # records per pack number
        return {
            pack_id: (self._pack_size[pn], counts.get(pn, 0))
            for pack_id, pn in self._pack_no.items()
        }

    def chain_of(self, pack_id: PackId) -> ChainId:
        """The chain of a present pack (KeyError for one not in the index)."""
        return self._chains[self._pack_chain[self._pack_no[pack_id]]]

    def blob_count(self) -> int:
        """How many distinct blobs the index holds."""
        self.flush()
        return self._run.distinct

    def blob_ids(self) -> Iterator[BlobId]:
        """Every distinct blob id, in id order."""
        self.flush()
        return self._run.distinct_ids()

    def packs_bytes(self) -> int:
        """The stored size of the packs present (removed ones left out): a sum over the
        packs, no work per blob."""
        with self._lock:  # add_pack appends size and alive together: read them as a pair
            return sum(
                size for size, alive in zip(self._pack_size, self._alive, strict=True) if alive
            )

    def memory(self) -> int:
        """Bytes held by the sorted run (the part that grows with the repository)."""
        return self._run.nbytes()

    # --- as bytes (the local index cache, docs/format.md "Local index cache") ---------------

    def to_bytes(self, prefix: bytes = b"") -> bytes:
        """The whole index, merged, in a form :meth:`from_bytes` loads without a Python
        step per blob, after ``prefix``."""
        with self.exported(prefix) as parts:
            return b"".join(parts)

    @contextmanager
    def exported(self, prefix: bytes = b"") -> Iterator[list[bytes | bytearray | memoryview]]:
        """The pieces whose concatenation is :meth:`to_bytes`, views of the index's arrays
        where the machine is little-endian rather than copies (the index cache of 200,000
        blobs is 10 MB, and every copy counts in a backup's peak memory). Valid inside the
        ``with`` only, which holds the index's lock: an array exporting a view cannot grow."""
        with self._lock:
            if self._first or self._dead_in_run:
                self._merge()
            run = self._run
            parts: list[bytes | bytearray | memoryview] = [
                prefix,
                _STATE_HEAD.pack(len(self._pack_ids), len(self._chains), run.n, run.distinct),
                b"".join(self._pack_ids),
                _le_view(self._pack_chain),
                _le_view(self._pack_size),
                bytes(self._alive),
                b"".join(self._chains),
                run.ids,
                _le_view(run.meta),
                run.types,
                _le_view(run.dir),
            ]
            try:
                yield parts
            finally:
                for part in parts:
                    if isinstance(part, memoryview):
                        part.release()

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> Index:
        """The index :meth:`to_bytes` wrote; FormatError if ``raw`` is not one."""
        view = memoryview(raw)
        try:
            packs, chains, n, distinct = _STATE_HEAD.unpack_from(view, 0)
        except struct.error as exc:
            raise FormatError("index state is truncated") from exc
        pos = _STATE_HEAD.size

        def take(length: int) -> memoryview:
            nonlocal pos
            if pos + length > len(view):
                raise FormatError("index state is truncated")
            pos += length
            return view[pos - length : pos]

        index = cls()
        pack_ids = bytes(take(32 * packs))
        index._pack_ids = [PackId(pack_ids[i : i + 32]) for i in range(0, len(pack_ids), 32)]
        index._pack_chain = _from_le("I", take(4 * packs))
        index._pack_size = _from_le("Q", take(8 * packs))
        index._alive = bytearray(take(packs))
        chain_ids = bytes(take(16 * chains))
        index._chains = [ChainId(chain_ids[i : i + 16]) for i in range(0, len(chain_ids), 16)]
        ids = bytes(take(32 * n))
        meta = _from_le("I", take(4 * FIELDS * n))
        types = bytes(take(n))
        directory = _from_le("I", view[pos:])
        if len(directory) != (1 << _bits_for(n)) + 1 or directory[-1] != n:
            raise FormatError("index state has a damaged directory")
        if (
            max(index._pack_chain, default=-1) >= chains
            or max(meta[0::FIELDS], default=-1) >= packs
        ):
            raise FormatError("index state names a pack or chain it does not hold")
        index._chain_no = {c: i for i, c in enumerate(index._chains)}
        index._pack_no = {p: i for i, p in enumerate(index._pack_ids) if index._alive[i]}
        if n:
            index._run = SortedRun(ids, meta, types, distinct, directory)
        return index

    # --- packs -----------------------------------------------------------------------------

    def _record(self, pack_id: PackId) -> PackRecord:
        pn = self._pack_no[pack_id]
        chain = self._chains[self._pack_chain[pn]]
        with self._lock:  # a merge empties the overlay
            ids = self._recent.get(pn)
            if ids is not None:
                recent = self._overlay_entries(pn, ids)
                return PackRecord(pack_id, chain, self._pack_size[pn], recent)
        groups = self._pack_groups()
        run = groups.run
        lo = bisect_left(groups.packs, pn)
        hi = bisect_right(groups.packs, pn)
        entries = []
        for i in groups.order[lo:hi]:
            _pn, blob_type, offset, length, raw_length = run.entry(i)
            entries.append(PackEntry(blob_type, offset, length, raw_length, run.id_at(i)))
        # A pack's entries are stored in offset order; restore it.
        entries.sort(key=lambda e: e.offset)
        return PackRecord(pack_id, chain, self._pack_size[pn], tuple(entries))

    def _overlay_entries(self, pn: int, ids: tuple[BlobId, ...]) -> tuple[PackEntry, ...]:
        """The entries of recent pack ``pn`` holding ``ids``, rebuilt from the overlay, in
        offset order. The caller holds the lock."""
        entries = []
        for blob_id in dict.fromkeys(ids):  # each id once, however often the pack holds it
            for e in (self._first[blob_id], *self._more.get(blob_id, ())):
                if e & PN_MASK == pn:
                    _pn, blob_type, offset, length, raw_length = unpack_entry(e)
                    entries.append(PackEntry(blob_type, offset, length, raw_length, blob_id))
        entries.sort(key=lambda e: e.offset)
        return tuple(entries)

    def _pack_groups(self) -> _PackGroups:
        """The run's records grouped by pack, built on first use after each merge."""
        with self._groups_lock:
            groups = self._groups
            run = self._run
            if groups is None or groups.run is not run:
                pack_col = run.meta[0::FIELDS]
                order = array("I", sorted(range(run.n), key=pack_col.__getitem__))
                packs = array("I", map(pack_col.__getitem__, order))
                groups = self._groups = _PackGroups(run, order, packs)
            return groups


@dataclass(frozen=True, slots=True)
class _PackGroups:
    run: SortedRun
    order: array[int]  # record numbers, by pack number
    packs: array[int]  # the pack number of each, ascending


class _PackView(Mapping[PackId, PackRecord]):
    """``index.packs``: the present packs by id. Records are rebuilt on access (their
    entries are not kept as objects), so hold on to one rather than looking it up again."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def __getitem__(self, pack_id: PackId) -> PackRecord:
        return self._index._record(pack_id)

    def __contains__(self, pack_id: object) -> bool:
        return pack_id in self._index._pack_no

    def __iter__(self) -> Iterator[PackId]:
        return iter(list(self._index._pack_no))

    def __len__(self) -> int:
        return len(self._index._pack_no)
