"""The compact in-memory index against a plain dict model, driven by hypothesis.

The model keeps packs in the order they were added (dict order); ``lookup`` must give the
first present pack's copy, ``has_in_chain`` any present copy in that chain. Tiny merge
thresholds make every few additions go through a merge of the sorted run.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from safehold.errors import FormatError
from safehold.repository.index import (
    Index,
    IndexLoader,
    Location,
    PackRecord,
    decode_sections,
    encode_index,
    encode_section,
)
from safehold.repository.index_run import SortedRun, pack_entry, unpack_entry
from safehold.repository.pack import PackEntry

# A few ids that share leading bytes (same directory bucket, and a neighbour that differs
# only at the end) plus random ones, so collisions and bucket edges are exercised.
_SHARED = [b"\x00" * 32, b"\x00" * 31 + b"\x01", b"\xff" * 32, b"\x80" + b"\x00" * 31]
blob_ids = st.one_of(st.sampled_from(_SHARED), st.binary(min_size=32, max_size=32))
chains = st.sampled_from([b"a" * 16, b"b" * 16, b"c" * 16])


@st.composite
def pack_records(draw: st.DrawFn) -> PackRecord:
    pack_id = draw(st.binary(min_size=1, max_size=1)) * 32  # few ids: re-adds happen
    ids = draw(st.lists(blob_ids, max_size=12))
    entries = []
    offset = 8
    for blob_id in ids:
        length = draw(st.integers(1, 5000))
        raw = draw(st.integers(0, 2**32 - 1))
        entries.append(PackEntry(draw(st.sampled_from([0, 1])), offset, length, raw, blob_id))
        offset += length
    return PackRecord(pack_id, draw(chains), offset + 100, tuple(entries))


class Model:
    def __init__(self) -> None:
        self.packs: dict[bytes, PackRecord] = {}

    def add(self, rec: PackRecord) -> None:
        self.packs.setdefault(rec.pack_id, rec)

    def remove(self, pack_id: bytes) -> None:
        self.packs.pop(pack_id, None)

    def lookup(self, blob_id: bytes) -> Location | None:
        for rec in self.packs.values():
            for e in rec.entries:
                if e.blob_id == blob_id:
                    return Location(rec.pack_id, e.blob_type, e.offset, e.length, e.raw_length)
        return None

    def has_in_chain(self, blob_id: bytes, chain: bytes) -> bool:
        return any(
            rec.chain_id == chain and any(e.blob_id == blob_id for e in rec.entries)
            for rec in self.packs.values()
        )

    def blob_ids(self) -> set[bytes]:
        return {e.blob_id for rec in self.packs.values() for e in rec.entries}


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.index = Index(merge_at=3)
        self.seen: set[bytes] = set(_SHARED)

    @rule(rec=pack_records())
    def add(self, rec: PackRecord) -> None:
        self.model.add(rec)
        self.index.add_pack(rec)
        self.seen.update(e.blob_id for e in rec.entries)

    @rule(rec=pack_records())
    def add_section(self, rec: PackRecord) -> None:
        # A backup adds its packs through their index sections: the same as add_pack.
        self.model.add(rec)
        self.index.add_section(encode_section(rec))
        self.seen.update(e.blob_id for e in rec.entries)

    @precondition(lambda self: self.model.packs)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        pack_id = data.draw(st.sampled_from(sorted(self.model.packs)))
        self.model.remove(pack_id)
        self.index.remove_pack(pack_id)

    @rule(pack_id=st.binary(min_size=1, max_size=1))
    def remove_absent_or_present(self, pack_id: bytes) -> None:
        self.model.remove(pack_id * 32)
        self.index.remove_pack(pack_id * 32)

    @rule()
    def flush(self) -> None:
        self.index.flush()

    @rule()
    def copy(self) -> None:
        # A copy must behave the same and stay independent of the original.
        self.index = self.index.copy()

    @invariant()
    def lookups_agree(self) -> None:
        for blob_id in self.seen:
            assert self.index.lookup(blob_id) == self.model.lookup(blob_id)
            assert (blob_id in self.index) == (self.model.lookup(blob_id) is not None)
            for chain in (b"a" * 16, b"b" * 16, b"c" * 16):
                want = self.model.has_in_chain(blob_id, chain)
                assert self.index.has_in_chain(blob_id, chain) == want
                assert self.index.has_all_in_chain([blob_id.hex()], chain) == want

    @invariant()
    def whole_lists_agree(self) -> None:
        ids = sorted(self.seen)
        for chain in (b"a" * 16, b"b" * 16, b"c" * 16):
            want = all(self.model.has_in_chain(b, chain) for b in ids)
            assert self.index.has_all_in_chain([b.hex() for b in ids], chain) == want
            present = [b.hex() for b in ids if self.model.has_in_chain(b, chain)]
            assert self.index.has_all_in_chain(present, chain)

    @invariant()
    def packs_agree(self) -> None:
        assert set(self.index.packs) == set(self.model.packs)
        assert len(self.index.packs) == len(self.model.packs)
        for pack_id, rec in self.model.packs.items():
            assert self.index.packs[pack_id] == rec
            assert self.index.chain_of(pack_id) == rec.chain_id
        assert self.index.packs_bytes() == sum(rec.size for rec in self.model.packs.values())

    @invariant()
    def counts_agree(self) -> None:
        expected = self.model.blob_ids()
        assert self.index.blob_count() == len(expected)
        assert list(self.index.blob_ids()) == sorted(expected)


IndexMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestIndexAgainstModel = IndexMachine.TestCase


@settings(max_examples=30, deadline=None)
@given(st.lists(pack_records(), max_size=20), st.integers(1, 50))
def test_bulk_loading_matches_model(records: list[PackRecord], merge_at: int) -> None:
    model, index = Model(), Index(merge_at=merge_at)
    for rec in records:
        model.add(rec)
        index.add_pack(rec)
    for blob_id in model.blob_ids() | set(_SHARED):
        assert index.lookup(blob_id) == model.lookup(blob_id)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(pack_records(), max_size=20),
    st.integers(1, 4),
    st.lists(pack_records(), max_size=5),
)
def test_index_files_load_like_added_packs(
    records: list[PackRecord], files: int, later: list[PackRecord]
) -> None:
    # Index files as a repository holds them (a pack may be listed by two of them); the
    # loaded index must answer like the model, and keep working as packs come and go.
    model = Model()
    loader = IndexLoader()
    for i in range(files):
        part = records[i::files]
        loader.add_file(encode_index(part + records[:1]), f"index {i}")
    for rec in [*records[:1], *(r for i in range(files) for r in records[i::files])]:
        model.add(rec)
    index = loader.finish()
    chains = [b"a" * 16, b"b" * 16, b"c" * 16]
    ids = model.blob_ids() | set(_SHARED)
    for blob_id in ids:
        assert index.lookup(blob_id) == model.lookup(blob_id)
        for chain in chains:
            assert index.has_in_chain(blob_id, chain) == model.has_in_chain(blob_id, chain)
    assert set(index.packs) == set(model.packs)
    for pack_id, rec in model.packs.items():
        assert sorted(index.packs[pack_id].entries, key=repr) == sorted(rec.entries, key=repr)
    for rec in later:
        model.add(rec)
        index.add_pack(rec)
    if records:
        model.remove(records[0].pack_id)
        index.remove_pack(records[0].pack_id)
    for blob_id in model.blob_ids() | ids:
        assert index.lookup(blob_id) == model.lookup(blob_id)
    assert index.packs_bytes() == sum(rec.size for rec in model.packs.values())


def test_a_damaged_index_file_adds_nothing() -> None:
    entry = PackEntry(1, 8, 100, 200, b"\x07" * 32)
    good = PackRecord(b"\x01" * 32, b"a" * 16, 300, (entry,))
    other = PackRecord(b"\x02" * 32, b"a" * 16, 300, (PackEntry(1, 8, 5, 5, b"\x09" * 32),))
    loader = IndexLoader()
    loader.add_file(encode_index([good]), "index a")
    raw = encode_index([other])
    for damaged in (raw[:-3], raw + b"x", raw[:2]):
        with pytest.raises(FormatError):
            loader.add_file(damaged, "index b")
    index = loader.finish()
    assert set(index.packs) == {good.pack_id}
    assert index.lookup(entry.blob_id) == Location(good.pack_id, 1, 8, 100, 200)
    assert index.lookup(b"\x09" * 32) is None


def test_many_blobs_use_the_directory() -> None:
    """Enough records for a multi-bit directory, merged in several steps."""
    import hashlib

    index = Index(merge_at=500)
    recs = []
    for p in range(40):
        entries = tuple(
            PackEntry(
                0, 8 + i * 10, 10, 20, hashlib.blake2b(b"%d-%d" % (p, i), digest_size=32).digest()
            )
            for i in range(100)
        )
        recs.append(PackRecord(hashlib.sha256(b"%d" % p).digest(), b"a" * 16, 2000, entries))
        index.add_pack(recs[-1])
    index.flush()
    assert index.blob_count() == 4000
    assert index.memory() < 4000 * 56
    for rec in recs:
        for e in rec.entries:
            loc = index.lookup(e.blob_id)
            assert loc is not None and loc.pack_id == rec.pack_id and loc.offset == e.offset
        assert index.packs[rec.pack_id] == rec
    assert index.lookup(b"\x07" * 32) is None
    index.remove_pack(recs[0].pack_id)
    assert index.lookup(recs[0].entries[0].blob_id) is None
    assert index.blob_count() == 3900


def test_readers_never_miss_a_blob_during_merges() -> None:
    """Lookups from another thread while packs are added and merged: every blob added
    before a reader starts looking for it is found."""
    import hashlib

    index = Index(merge_at=64)
    added: list[bytes] = []
    stop = threading.Event()
    misses: list[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            for blob_id in added[-200:]:
                if index.lookup(blob_id) is None:
                    misses.append(blob_id)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for p in range(200):
            ids = [hashlib.sha256(b"%d/%d" % (p, i)).digest() for i in range(20)]
            entries = tuple(PackEntry(0, 8 + i, 1, 1, b) for i, b in enumerate(ids))
            index.add_pack(PackRecord(hashlib.sha256(b"p%d" % p).digest(), b"a" * 16, 99, entries))
            added.extend(ids)
    finally:
        stop.set()
        t.join()
    assert not misses


def test_all_in_chain_edge_cases() -> None:
    index = Index()
    rec = PackRecord(b"p" * 32, b"a" * 16, 200, (PackEntry(1, 8, 10, 10, b"\x01" * 32),))
    index.add_pack(rec)
    index.flush()
    assert index.has_all_in_chain([], b"a" * 16)
    assert index.has_all_in_chain([], b"z" * 16)  # nothing asked: true even for no chain
    assert not index.has_all_in_chain(["01" * 32], b"z" * 16)
    assert index.has_all_in_chain(["01" * 32, "01" * 32], b"a" * 16)
    assert not index.has_all_in_chain(["01" * 16], b"a" * 16)  # a prefix is not the id
    assert not index.has_all_in_chain(["01" * 32, "02" * 32], b"a" * 16)


def test_ids_of_the_wrong_length_are_never_found() -> None:
    blob_id = bytes(range(32))
    index = Index(merge_at=1)
    index.add_pack(PackRecord(b"p" * 32, b"a" * 16, 99, (PackEntry(0, 8, 1, 1, blob_id),)))
    assert index.lookup(blob_id) is not None
    for wrong in (blob_id[:16], blob_id[4:20], blob_id + b"\x00", b""):
        assert index.lookup(wrong) is None
        assert not index.has_in_chain(wrong, b"a" * 16)


@given(st.lists(st.binary(min_size=32, max_size=32), unique=True, max_size=300))
def test_a_run_built_from_an_overlay_is_the_merged_one(ids: list[bytes]) -> None:
    """The first merge's shortcut (SortedRun.of_overlay) builds the run the general merge
    builds from an empty run: the same records, order, count and directory."""
    first = {b: pack_entry(i % 7, i % 2, 8 + i, 10 + i, 2**32 - 1 - i) for i, b in enumerate(ids)}
    keys = sorted(first)
    fast = SortedRun.of_overlay(keys, first)
    slow = SortedRun.empty()._merged(keys, first, {})
    assert (fast.ids, fast.meta, fast.types, fast.distinct, fast.dir) == (
        slow.ids,
        slow.meta,
        slow.types,
        slow.distinct,
        slow.dir,
    )


def test_merges_are_deferred_inside_merges_deferred() -> None:
    import hashlib

    def add(index: Index, p: int) -> PackRecord:
        entries = tuple(
            PackEntry(0, 8 + i, 1, 1, hashlib.sha256(b"%d/%d" % (p, i)).digest())
            for i in range(1000)
        )
        rec = PackRecord(hashlib.sha256(b"p%d" % p).digest(), b"a" * 16, 99, entries)
        index.add_pack(rec)
        return rec

    plain = Index()
    for p in range(70):
        add(plain, p)
    assert plain._run.n == 66_000  # merged at 65,536 records
    index = Index()
    with index.merges_deferred(records=200_000):
        recs = [add(index, p) for p in range(100)]
        assert index._run.n == 0
        assert all(index.lookup(r.entries[-1].blob_id) is not None for r in recs[::9])
    assert index._run.n == 0  # merged when next needed, not on leaving
    assert index.blob_count() == 100_000
    assert all(index.lookup(r.entries[-1].blob_id) is not None for r in recs[::9])
    assert index._threshold() == 1 << 16


@given(st.lists(pack_records(), max_size=12), st.integers(0, 11), st.booleans())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_locate_is_lookup_and_has_in_chain(
    records: list[PackRecord], removed: int, flushed: bool
) -> None:
    index = Index(merge_at=4)
    for rec in records:
        index.add_pack(rec)
    if records:
        index.remove_pack(records[removed % len(records)].pack_id)
    if flushed:
        index.flush()
    ids = {e.blob_id for rec in records for e in rec.entries} | {b"\x01" * 32}
    for blob_id in ids:
        for chain in (b"a" * 16, b"b" * 16, b"c" * 16, b"z" * 16):
            assert index.locate(blob_id, chain) == (
                index.lookup(blob_id),
                index.has_in_chain(blob_id, chain),
            )


@given(st.lists(pack_records(), max_size=12), st.integers(0, 11), st.booleans())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_marks_count_the_distinct_blobs_located(
    records: list[PackRecord], removed: int, twice: bool
) -> None:
    # Check counts the blobs it met with one byte per blob of the run instead of a set.
    loader = IndexLoader()
    loader.add_file(encode_index(records), "index")
    index = loader.finish()
    if records:
        index.remove_pack(records[removed % len(records)].pack_id)  # dead copies: not found
    marks = index.run_marks()
    assert marks is not None and len(marks) == index._run.n
    ids = [e.blob_id for rec in records for e in rec.entries] + [b"\x01" * 32]
    found = set()
    for blob_id in ids * (2 if twice else 1):
        loc, _ = index.locate(blob_id, b"a" * 16, marks)
        if loc is not None:
            found.add(blob_id)
    assert marks.count(1) == len(found)


def test_no_marks_while_additions_are_outside_the_run() -> None:
    index = Index()
    index.add_pack(PackRecord(b"p" * 32, b"a" * 16, 100, (PackEntry(0, 8, 10, 10, b"x" * 32),)))
    assert index.run_marks() is None
    index.flush()
    assert index.run_marks() == bytearray(1)


@given(st.lists(pack_records(), max_size=12), st.integers(0, 11), st.integers(1, 8))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_pack_summaries_are_the_records_sizes_and_counts(
    records: list[PackRecord], removed: int, merge_at: int
) -> None:
    index = Index(merge_at=merge_at)
    for rec in records:
        index.add_pack(rec)
    if records:
        index.remove_pack(records[removed % len(records)].pack_id)
    want = {p: (rec.size, len(rec.entries)) for p, rec in index.packs.items()}
    assert index.pack_summaries() == want


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
def test_overlay_entries_keep_every_field(pn: int, t: int, off: int, n: int, raw: int) -> None:
    assert unpack_entry(pack_entry(pn, t, off, n, raw)) == (pn, t, off, n, raw)


@pytest.mark.parametrize(
    "fields",
    [
        (2**32, 0, 0, 0, 0),
        (0, 256, 0, 0, 0),
        (0, 0, 2**32, 0, 0),
        (0, 0, 0, -1, 0),
        (0, -1, 0, 0, 0),
    ],
)
def test_an_overlay_entry_refuses_a_field_that_would_spill(
    fields: tuple[int, int, int, int, int],
) -> None:
    with pytest.raises(ValueError, match="out of range"):
        pack_entry(*fields)


@settings(max_examples=30, deadline=None)
@given(st.lists(pack_records(), max_size=6))
def test_sections_make_the_index_file_and_decode_to_the_records(
    records: list[PackRecord],
) -> None:
    sections = [encode_section(rec) for rec in records]
    assert decode_sections(sections) == records
    loader = IndexLoader()
    loader.add_file(encode_index(records), "index")
    built = Index()
    for section in sections:
        built.add_section(section)
    loaded = loader.finish()
    for rec in records:
        for e in rec.entries:
            assert built.lookup(e.blob_id) == loaded.lookup(e.blob_id)


def test_a_section_whose_count_disagrees_with_its_length_is_refused() -> None:
    rec = PackRecord(b"p" * 32, b"a" * 16, 99, (PackEntry(0, 8, 1, 1, b"x" * 32),))
    with pytest.raises(FormatError, match="blob count"):
        Index().add_section(encode_section(rec)[:-1])
