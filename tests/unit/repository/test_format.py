from __future__ import annotations

import io
import os
import random

import pytest

from safehold.crypto.aead import Aead
from safehold.errors import FormatError, IntegrityError
from safehold.repository.chunker import Chunker, ChunkerParams
from safehold.repository.compress import COMP_NONE, COMP_ZSTD, compress, decompress
from safehold.repository.format import (
    BLOB_DATA,
    T_INDEX,
    T_SNAPSHOT,
    open_object,
    seal_object,
    storage_id,
)
from safehold.repository.index import Index, PackRecord, decode_index, encode_index
from safehold.repository.pack import PackBuilder, parse_header, parse_trailer

AEAD = Aead(bytes(range(32)))


def test_sealed_object_roundtrip_and_type_check() -> None:
    raw = seal_object(AEAD, T_SNAPSHOT, b'{"a": 1}' * 100)
    assert raw[:4] == b"SH\x01\x04"
    assert open_object(AEAD, raw, T_SNAPSHOT, "x") == b'{"a": 1}' * 100
    with pytest.raises(FormatError):
        open_object(AEAD, raw, T_INDEX, "x")
    bumped = raw[:2] + b"\x09" + raw[3:]
    with pytest.raises(FormatError, match="version 9"):
        open_object(AEAD, bumped, T_SNAPSHOT, "x")
    # The header is authenticated: changing the type byte and the expectation fails too.
    forged = raw[:3] + bytes((T_INDEX,)) + raw[4:]
    with pytest.raises(IntegrityError):
        open_object(AEAD, forged, T_INDEX, "x")


def test_incompressible_data_is_stored_raw() -> None:
    rnd = os.urandom(100_000)
    cid, payload = compress(rnd, 3)
    assert cid == COMP_NONE and bytes(payload) == rnd
    text = b"hello world " * 10_000
    cid, payload = compress(text, 3)
    assert cid == COMP_ZSTD and len(payload) < len(text) // 10
    assert decompress(cid, payload, len(text)) == text


@pytest.mark.parametrize("level", [1, 3, 9])
@pytest.mark.parametrize("size", [100, 40_000, 3 * 1024 * 1024])
def test_compressed_payloads_are_plain_zstd_frames_with_their_size(level: int, size: int) -> None:
    # Level 3 uses tuned parameters: its frames must still carry their content size (the
    # one-shot decoder needs it) and decode with any zstd decoder.
    import zstandard

    text = b"".join(b"row %d, value %d;\n" % (i, i * 7 % 1000) for i in range(size // 16))
    text = text[:size]
    cid, payload = compress(text, level)
    assert cid == COMP_ZSTD
    assert zstandard.get_frame_parameters(bytes(payload)).content_size == size
    assert zstandard.ZstdDecompressor().decompress(bytes(payload)) == text
    assert decompress(cid, payload, size) == text


def test_level_3_tunes_large_inputs_only() -> None:
    # Below TUNED_MIN, zstd's own level 3 for the input's size compresses short text
    # better (a minimum match of 5 or less); above it, the tuned parameters (minimum match 6)
    # are what the chunks get.
    import zstandard

    from safehold.repository.compress import TUNED_MIN

    words = [b"meeting", b"report", b"budget", b"the", b"draft", b"please", b"review", b"of"]
    rng = random.Random(7)
    text = b" ".join(rng.choice(words) for _ in range(60_000))
    plain = zstandard.ZstdCompressor(level=3, write_content_size=True)
    small = text[: TUNED_MIN - 1]
    assert bytes(compress(small, 3)[1]) == plain.compress(small)
    large = text[: 2 * TUNED_MIN]
    packed = bytes(compress(large, 3)[1])
    assert packed != plain.compress(large)
    assert zstandard.ZstdDecompressor().decompress(packed) == large


def test_pack_roundtrip_from_its_own_header() -> None:
    chain = os.urandom(16)
    b = PackBuilder(chain)
    blobs = [os.urandom(n) for n in (10, 1000, 70_000)]
    for i, data in enumerate(blobs):
        b.add(BLOB_DATA, bytes([i]) * 32, AEAD.seal(data, bytes([i]) * 32), len(data))
    raw = bytes(b.finish(AEAD))
    hlen = parse_trailer(raw[-8:], len(raw), "p")
    got_chain, entries = parse_header(AEAD, raw[-8 - hlen : -8], "p")
    assert got_chain == chain
    assert [e.raw_length for e in entries] == [10, 1000, 70_000]
    for e, data in zip(entries, blobs, strict=True):
        assert AEAD.open(raw[e.offset : e.offset + e.length], e.blob_id) == data


def test_damaged_trailer_is_a_format_error() -> None:
    with pytest.raises(FormatError):
        parse_trailer(b"\x00" * 8, 100, "p")


def test_index_encode_decode_and_chain_lookup() -> None:
    chain_a, chain_b = b"a" * 16, b"b" * 16
    b1 = PackBuilder(chain_a)
    e1 = b1.add(BLOB_DATA, b"x" * 32, b"sealed", 5)
    b2 = PackBuilder(chain_b)
    e2 = b2.add(BLOB_DATA, b"x" * 32, b"sealed2", 5)
    recs = [PackRecord(b"1" * 32, chain_a, 100, (e1,)), PackRecord(b"2" * 32, chain_b, 200, (e2,))]
    decoded = decode_index(encode_index(recs), "i")
    assert decoded == recs
    idx = Index()
    for r in decoded:
        idx.add_pack(r)
    assert idx.has_in_chain(b"x" * 32, chain_a)
    assert idx.has_in_chain(b"x" * 32, chain_b)
    assert not idx.has_in_chain(b"x" * 32, b"c" * 16)
    idx.remove_pack(b"1" * 32)
    loc = idx.lookup(b"x" * 32)
    assert loc is not None and loc.pack_id == b"2" * 32
    with pytest.raises(FormatError):
        decode_index(encode_index(recs)[:-3], "i")


def test_storage_id_is_content_hash() -> None:
    assert storage_id(b"abc") == storage_id(b"abc") != storage_id(b"abd")


def test_chunker_is_content_defined() -> None:
    params = ChunkerParams(min_size=64 * 1024, avg_size=128 * 1024, max_size=512 * 1024, seed=7)
    data = os.urandom(4 * 1024 * 1024)
    before = [bytes(c) for c in Chunker(params).cut(data)]
    assert b"".join(before) == data
    assert all(len(c) <= params.max_size for c in before)
    assert all(len(c) >= params.min_size for c in before[:-1])
    shifted = data[:1_000_000] + b"inserted bytes" + data[1_000_000:]
    after = {bytes(c) for c in Chunker(params).cut(shifted)}
    # Only the chunks around the insertion change.
    assert len(set(before) - after) <= 2
    other_seed = ChunkerParams(min_size=64 * 1024, avg_size=128 * 1024, max_size=512 * 1024, seed=8)
    assert [len(c) for c in Chunker(other_seed).cut(data)] != [len(c) for c in before]


@pytest.mark.parametrize("size", [0, 1, 100_000, 3 * 1024 * 1024 + 5])
def test_stream_cutting_matches_whole_buffer_cutting(size: int) -> None:
    params = ChunkerParams(min_size=16 * 1024, avg_size=64 * 1024, max_size=256 * 1024, seed=3)
    data = os.urandom(size)
    whole = [bytes(c) for c in Chunker(params).cut(data)] if data else []
    src = io.BytesIO(data)
    streamed = [
        bytes(c) for c in Chunker(params).cut_stream(src.readinto, bytearray(2 * params.max_size))
    ]
    assert streamed == whole
    with pytest.raises(ValueError):
        next(Chunker(params).cut_stream(src.readinto, bytearray(10)))
