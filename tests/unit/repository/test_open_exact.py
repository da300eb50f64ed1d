"""Opening a blob straight into a caller's buffer (Repository.open_blob_exact) and the
decompression it uses (compress.decompress_into): same content, same checks as open_blob."""

from __future__ import annotations

import os

import pytest

from safehold.errors import IntegrityError
from safehold.repository.compress import COMP_ZSTD, compress, decompress_into
from safehold.repository.format import BLOB_DATA
from safehold.repository.repository import Repository, pack_name
from safehold.repository.saver import BlobSaver

TEXT = b"".join(b"row %d of a table, some words repeated\n" % i for i in range(20_000))
RANDOM = os.urandom(300_000)  # stored raw: zstd does not shrink it


def test_decompress_into_fills_exactly() -> None:
    comp, payload = compress(TEXT, 3)
    assert comp == COMP_ZSTD
    out = memoryview(bytearray(len(TEXT)))
    decompress_into(comp, payload, out)
    assert bytes(out) == TEXT


def test_decompress_into_rejects_damage_and_wrong_sizes() -> None:
    _, payload = compress(TEXT, 3)
    with pytest.raises(IntegrityError):
        decompress_into(
            COMP_ZSTD, bytes(payload[: len(payload) // 2]), memoryview(bytearray(len(TEXT)))
        )
    with pytest.raises(IntegrityError):  # the frame holds less than asked for
        decompress_into(COMP_ZSTD, payload, memoryview(bytearray(len(TEXT) + 1)))


def _stored(repo: Repository, data: bytes) -> tuple[bytes, bytes, int]:
    """(blob id, sealed bytes, raw length) of ``data`` saved in ``repo``."""
    saver = BlobSaver(repo, b"c" * 16)
    blob_id, _ = saver.save(BLOB_DATA, data)
    saver.finish()
    loc = repo.index.lookup(blob_id)
    assert loc is not None
    sealed = repo.storage.get(pack_name(loc.pack_id), loc.offset, loc.length)
    return blob_id, sealed, loc.raw_length


@pytest.mark.parametrize("data", [TEXT, RANDOM], ids=["compressed", "raw"])
@pytest.mark.parametrize("shift", [0, 1, 4095])
def test_open_exact_places_the_plaintext(mem_repo: Repository, data: bytes, shift: int) -> None:
    blob_id, sealed, raw_len = _stored(mem_repo, data)
    buf = bytearray(shift + raw_len + 10)
    out = memoryview(buf)[shift : shift + raw_len]
    got = mem_repo.open_blob_exact(blob_id, sealed, "pack", bytearray(len(sealed)), out)
    assert bytes(got) == data
    assert bytes(buf[shift : shift + raw_len]) == data
    assert bytes(buf[:shift]) == bytes(shift)  # nothing written outside


@pytest.mark.parametrize("data", [TEXT, RANDOM], ids=["compressed", "raw"])
def test_open_exact_checks_like_open_blob(mem_repo: Repository, data: bytes) -> None:
    blob_id, sealed, raw_len = _stored(mem_repo, data)
    scratch = bytearray(len(sealed))
    with pytest.raises(IntegrityError):  # a length the index got wrong
        mem_repo.open_blob_exact(
            blob_id, sealed, "pack", scratch, memoryview(bytearray(raw_len - 1))
        )
    damaged = bytearray(sealed)
    damaged[len(damaged) // 2] ^= 1
    with pytest.raises(IntegrityError):
        mem_repo.open_blob_exact(blob_id, damaged, "pack", scratch, memoryview(bytearray(raw_len)))
    with pytest.raises(IntegrityError):  # another blob's id: the content does not match
        other = bytes(32)
        mem_repo.open_blob_exact(other, sealed, "pack", scratch, memoryview(bytearray(raw_len)))
