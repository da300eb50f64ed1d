"""Sealing straight into a caller's buffer."""

from __future__ import annotations

import pytest

from safehold.crypto import aead as aead_module
from safehold.crypto.aead import OVERHEAD, Aead
from safehold.errors import FormatError, IntegrityError


@pytest.mark.parametrize("native", [True, False])
def test_seal_into_writes_a_message_that_opens(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aead_module, "_HAS_ENCRYPT_INTO", native)
    aead = Aead(b"k" * 32)
    plain = b"secret data" * 100
    buf = bytearray(b"\xee" * (len(plain) + OVERHEAD + 10))
    aead.seal_into(memoryview(plain), b"aad", memoryview(buf)[5 : 5 + len(plain) + OVERHEAD])
    assert buf[:5] == b"\xee" * 5 and buf[-5:] == b"\xee" * 5  # nothing outside is touched
    message = bytes(buf[5:-5])
    assert aead.open(message, b"aad") == plain
    assert message[0] == 1 and plain not in message
    # Same layout as seal: cipher id | nonce | ciphertext | tag.
    assert len(message) == len(aead.seal(plain, b"aad"))


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("delta", [-1, 1])
def test_seal_into_a_buffer_of_the_wrong_size_fails(
    native: bool, delta: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aead_module, "_HAS_ENCRYPT_INTO", native)
    with pytest.raises(ValueError):
        Aead(b"k" * 32).seal_into(b"data", b"aad", memoryview(bytearray(4 + OVERHEAD + delta)))


@pytest.mark.parametrize("native", [True, False])
def test_open_into_decrypts_into_the_callers_buffer(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aead_module, "_HAS_DECRYPT_INTO", native)
    aead = Aead(b"k" * 32)
    plain = b"secret data" * 100
    out = bytearray(b"\xee" * (len(plain) + 50))
    view = aead.open_into(aead.seal(plain, b"aad"), b"aad", out)
    assert view.obj is out and bytes(view) == plain
    assert out[len(plain) :] == b"\xee" * 50  # nothing past the plaintext is touched


@pytest.mark.parametrize("native", [True, False])
def test_open_into_reports_damage_like_open(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aead_module, "_HAS_DECRYPT_INTO", native)
    aead = Aead(b"k" * 32)
    sealed = bytearray(aead.seal(b"payload", b"aad"))
    sealed[-1] ^= 1
    out = bytearray(64)
    with pytest.raises(IntegrityError, match="blob x failed authentication"):
        aead.open_into(sealed, b"aad", out, what="blob x")
    with pytest.raises(IntegrityError, match="truncated"):
        aead.open_into(sealed[:10], b"aad", out)
    with pytest.raises(FormatError, match="unknown cipher id 7"):
        aead.open_into(b"\x07" + bytes(sealed[1:]), b"aad", out)
