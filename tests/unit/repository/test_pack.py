"""Assembling a pack by reserving room and writing blobs into it."""

from __future__ import annotations

import os

from safehold.crypto.aead import OVERHEAD, Aead
from safehold.repository.format import BLOB_DATA
from safehold.repository.pack import PackBuilder, pack_length, parse_header, parse_trailer

AEAD = Aead(bytes(range(32)))


def test_reserved_blobs_give_the_same_pack_as_added_ones() -> None:
    chain = os.urandom(16)
    blobs = [(bytes([i]) * 32, os.urandom(n)) for i, n in enumerate((10, 5000, 300_000))]
    sealed = [AEAD.seal(data, bid) for bid, data in blobs]
    added, reserved = PackBuilder(chain), PackBuilder(chain, capacity=64)
    for (bid, data), s in zip(blobs, sealed, strict=True):
        added.add(BLOB_DATA, bid, s, len(data))
    entries = [
        reserved.reserve(BLOB_DATA, bid, len(s), len(data))
        for (bid, data), s in zip(blobs, sealed, strict=True)
    ]
    for e, s in reversed(list(zip(entries, sealed, strict=True))):  # any order of writing
        reserved.view(e)[:] = s
    a, r = bytes(added.finish(AEAD)), bytes(reserved.finish(AEAD))
    body = entries[-1].offset + len(sealed[-1])
    assert added.entries == reserved.entries
    assert a[:body] == r[:body]  # only the sealed pack header (its nonce) differs
    assert len(a) == len(r) == pack_length(sum(map(len, sealed)), 3)
    hlen = parse_trailer(r[-8:], len(r), "p")
    _, got = parse_header(AEAD, r[-8 - hlen : -8], "p")
    assert [(e.offset, e.length) for e in got] == [(e.offset, e.length) for e in entries]


def test_fits_counts_the_header_a_finished_pack_will_carry() -> None:
    b = PackBuilder(os.urandom(16))
    b.reserve(BLOB_DATA, b"\0" * 32, 1000 + OVERHEAD, 1000)
    limit = pack_length(2 * (1000 + OVERHEAD), 2)
    assert b.fits(1000 + OVERHEAD, limit)
    assert not b.fits(1001 + OVERHEAD, limit)
    assert PackBuilder(os.urandom(16)).fits(10 * limit, limit)  # an empty pack takes any blob
    assert b.room() == len(b.buf) - b.size
