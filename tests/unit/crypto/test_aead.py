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


def _nonce_of(message: bytes) -> bytes:
    return message[1 : 1 + aead_module.NONCE_LEN]


def test_nonces_come_from_a_per_thread_buffer_and_never_repeat() -> None:
    import threading

    aead = Aead(b"k" * 32)
    nonces = [_nonce_of(aead.seal(b"x", b"")) for _ in range(1000)]  # 3 buffers' worth
    others: list[bytes] = []
    thread = threading.Thread(
        target=lambda: others.extend(_nonce_of(aead.seal(b"x", b"")) for _ in range(500))
    )
    thread.start()
    thread.join()
    assert len(set(nonces + others)) == 1500
    assert all(len(n) == aead_module.NONCE_LEN for n in nonces)


def test_a_forked_child_drops_the_nonce_buffer_it_inherited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    monkeypatch.setattr(aead_module, "_nonces", aead_module._Nonces())
    aead = Aead(b"k" * 32)
    aead.seal(b"x", b"")  # this thread's buffer now holds the next 340 nonces
    inherited = aead_module._nonces
    assert inherited.pos == aead_module.NONCE_LEN
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the state it starts from, and its first nonce
        try:
            fresh = aead_module._nonces is not inherited and aead_module._nonces.buf == b""
            os.write(write_end, bytes([fresh]) + _nonce_of(aead.seal(b"x", b"")))
        finally:
            os._exit(0)
    os.close(write_end)
    got = b""
    while chunk := os.read(read_end, 64):
        got += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    assert got[:1] == b"\x01"
    child_nonce = got[1:]
    assert len(child_nonce) == aead_module.NONCE_LEN
    # The parent's next nonce is the one the child would have used without the reset.
    assert _nonce_of(aead.seal(b"x", b"")) != child_nonce
