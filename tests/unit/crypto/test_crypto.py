from __future__ import annotations

import json

import pytest

from safehold.crypto.aead import Aead
from safehold.crypto.keys import KdfParams, MasterKey, key_file_meta, make_key_file, open_key_file
from safehold.errors import FormatError, IntegrityError, WrongPassword

FAST = KdfParams(n=1 << 10)


def test_seal_open_roundtrip_and_nonce_is_random() -> None:
    aead = Aead(b"k" * 32)
    a = aead.seal(b"secret data", b"aad")
    b = aead.seal(b"secret data", b"aad")
    assert a != b  # random nonces
    assert aead.open(a, b"aad") == b"secret data"
    assert b"secret data" not in a


def test_sealing_in_parts_is_sealing_the_whole() -> None:
    """seal_parts writes, piece by piece, the message seal would (same layout, same
    AES-GCM): it opens like any other, its ciphertext is the whole's under the same nonce,
    and a wrong aad or a changed byte is refused."""
    from array import array

    from safehold.crypto import aead as aead_module

    aead = Aead(b"k" * 32)
    counts = array("I", range(100_000))  # an array's view counts items, not bytes
    parts = [b"head", bytearray(b"\x01" * 3), memoryview(counts), b"", b"tail" * 300_000]
    whole = b"".join(parts)
    pieces: list[bytes] = []
    aead.seal_parts(parts, b"aad", pieces.append)
    message = b"".join(pieces)
    assert len(pieces) > 4  # handed over in steps, not at once
    assert len(message) == len(whole) + aead_module.OVERHEAD
    assert aead.open(message, b"aad") == whole
    nonce = message[1 : 1 + aead_module.NONCE_LEN]
    assert message[1 + aead_module.NONCE_LEN :] == aead._aes.encrypt(nonce, whole, b"aad")
    with pytest.raises(IntegrityError):
        aead.open(message, b"other")
    damaged = bytearray(message)
    damaged[len(message) // 2] ^= 1
    with pytest.raises(IntegrityError):
        aead.open(bytes(damaged), b"aad")


@pytest.mark.parametrize("position", [0, 1, 13, -1])
def test_tampering_anywhere_is_detected(position: int) -> None:
    aead = Aead(b"k" * 32)
    sealed = bytearray(aead.seal(b"x" * 100, b"aad"))
    sealed[position] ^= 1
    with pytest.raises((IntegrityError, FormatError)):
        aead.open(bytes(sealed), b"aad")


def test_wrong_aad_is_rejected() -> None:
    aead = Aead(b"k" * 32)
    with pytest.raises(IntegrityError):
        aead.open(aead.seal(b"data", b"blob-1"), b"blob-2")


def test_key_file_roundtrip_and_wrong_password() -> None:
    master = MasterKey.generate()
    raw = make_key_file(master, b"pw", params=FAST, meta={"hostname": "h"})
    assert open_key_file(raw, b"pw") == master
    with pytest.raises(WrongPassword):
        open_key_file(raw, b"other")
    meta = key_file_meta(raw)
    assert meta["hostname"] == "h" and "data" not in meta and "salt" not in meta
    assert master.encrypt.hex() not in raw.decode()


def test_damaged_key_file_is_a_format_error() -> None:
    raw = make_key_file(MasterKey.generate(), b"pw", params=FAST)
    doc = json.loads(raw)
    del doc["salt"]
    with pytest.raises(FormatError):
        open_key_file(json.dumps(doc).encode(), b"pw")


def test_blob_ids_are_keyed() -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    assert a.blob_id(b"same") != b.blob_id(b"same")
    assert a.blob_id(b"same") == a.blob_id(b"same")


def test_default_key_files_hold_32_mib_and_older_parameters_still_open() -> None:
    master = MasterKey.generate()
    doc = json.loads(make_key_file(master, b"pw"))
    # 128 * n * r bytes of scrypt working set: the peak memory of every command.
    assert (doc["kdf"], doc["n"], doc["r"], doc["p"]) == ("scrypt-lanes", 1 << 15, 8, 4)
    assert 128 * doc["n"] * doc["r"] == 32 * 1024 * 1024
    # RFC 7914 key files (safehold's until 2026-12-06, p=2; restic's) open as before.
    rfc = make_key_file(master, b"pw", params=KdfParams(p=2, kind="scrypt"))
    assert json.loads(rfc)["kdf"] == "scrypt"
    assert open_key_file(rfc, b"pw") == master
    # A key file from before the change (n=2**16, p=1) opens with its own parameters.
    old = make_key_file(master, b"pw", params=KdfParams(n=1 << 16, r=8, p=1))
    assert json.loads(old)["n"] == 1 << 16
    assert open_key_file(old, b"pw") == master
    with pytest.raises(WrongPassword):
        open_key_file(old, b"other")
