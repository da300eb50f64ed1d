"""Authenticated encryption with associated data (AEAD) for blobs and objects.

Layout of one sealed message (docs/format.md, "Sealed message")::

    cipher id (1) | nonce (12) | ciphertext | tag (16)

Ciphers are registered by id so that a repository can move to another one without
guessing. Nonces are random: with 96-bit nonces the collision bound for one key is reached
after about 2**32 messages, far beyond one repository's blob count in practice; the format
document states this limit.

Nonces are sliced from a per-thread buffer of ``os.urandom`` bytes (:class:`_Nonces`), one
getrandom call per 341 nonces rather than per blob: each call releases the interpreter lock
and waits to get it back, 30 µs a blob in a reader thread of a backup of small files. A
forked child drops the buffers it inherited (``os.register_at_fork``), or it would seal with
the same nonces as its parent under the same key.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from safehold.errors import FormatError, IntegrityError

CIPHER_AES_256_GCM = 1
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = 1 + NONCE_LEN + TAG_LEN
KEY_LEN = 32
_CIPHER_ID = bytes((CIPHER_AES_256_GCM,))
# The *_into methods came with cryptography 45 (the project allows >= 43).
_HAS_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")
_HAS_DECRYPT_INTO = hasattr(AESGCM, "decrypt_into")
_NONCE_BATCH = 341 * NONCE_LEN  # 4,092 bytes
_STREAM_STEP = 1 << 20  # bytes encrypted per step by seal_parts


class _Nonces(threading.local):
    """This thread's buffer of random bytes and how much of it is used."""

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0

    def take(self) -> bytes:
        pos = self.pos
        if pos + NONCE_LEN > len(self.buf):
            self.buf = os.urandom(_NONCE_BATCH)
            pos = 0
        self.pos = pos + NONCE_LEN
        return self.buf[pos : pos + NONCE_LEN]


_nonces = _Nonces()


def _forget_nonces() -> None:
    """In a forked child: new buffers, none of the parent's bytes."""
    global _nonces
    _nonces = _Nonces()


os.register_at_fork(after_in_child=_forget_nonces)


class Aead:
    """Seals and opens messages under one 32-byte key. Thread-safe (no shared state)."""

    __slots__ = ("_aes", "_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("AEAD keys are 32 bytes")
        self._aes = AESGCM(key)
        self._key = key

    def seal_parts(
        self,
        parts: Iterable[bytes | bytearray | memoryview],
        aad: bytes,
        write: Callable[[bytes], object],
    ) -> None:
        """:meth:`seal` of the concatenation of ``parts``, handed to ``write`` a piece at a
        time: the same message (AES-GCM through OpenSSL's streaming interface computes the
        same ciphertext and tag), but neither the plaintext nor the sealed message is ever
        whole in memory (the index cache of a large repository is tens of MB)."""
        nonce = _nonces.take()
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        write(_CIPHER_ID + nonce)
        for part in parts:
            view = memoryview(part).cast("B")  # an array's view counts items, not bytes
            for at in range(0, len(view), _STREAM_STEP):
                write(encryptor.update(view[at : at + _STREAM_STEP]))
        write(encryptor.finalize())  # nothing left for GCM, but finalize computes the tag
        write(encryptor.tag)

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        """``plaintext`` sealed under a fresh random nonce: cipher id, nonce, ciphertext and tag;
        ``aad`` is authenticated, not stored."""
        nonce = _nonces.take()
        return _CIPHER_ID + nonce + self._aes.encrypt(nonce, plaintext, aad)

    def seal_into(self, plaintext: bytes | memoryview, aad: bytes, out: memoryview) -> None:
        """Seals straight into ``out`` (exactly ``len(plaintext) + OVERHEAD`` bytes), e.g. a
        pack buffer: no sealed copy is allocated, touched and copied again. A wrong size
        raises ValueError."""
        nonce = _nonces.take()
        out[0] = CIPHER_AES_256_GCM
        out[1 : 1 + NONCE_LEN] = nonce
        body = out[1 + NONCE_LEN :]
        if _HAS_ENCRYPT_INTO:
            self._aes.encrypt_into(nonce, plaintext, aad, body)
        else:  # an older cryptography (the project allows >= 43)
            sealed = self._aes.encrypt(nonce, plaintext, aad)
            if len(sealed) != len(body):
                raise ValueError(f"buffer must be {len(sealed) + 1 + NONCE_LEN} bytes")
            body[:] = sealed

    def open(self, message: bytes | memoryview, aad: bytes, *, what: str = "object") -> bytes:
        """The plaintext of a sealed ``message`` with ``aad``; raises :class:`IntegrityError`
        naming ``what`` if it was damaged, altered, or sealed under another key."""
        nonce = self._nonce(message, what)
        try:
            return self._aes.decrypt(nonce, message[1 + NONCE_LEN :], aad)
        except InvalidTag as exc:
            raise _damaged(what) from exc

    def open_into(
        self,
        message: bytes | memoryview,
        aad: bytes,
        out: bytearray | memoryview,
        *,
        what: str = "object",
    ) -> memoryview:
        """:meth:`open`, decrypting into ``out`` (at least ``len(message) - OVERHEAD``
        bytes), so that a caller opening many messages allocates (and zeroes, holding the
        interpreter lock) no plaintext object for each. Returns the view of ``out`` that
        holds the plaintext, valid until the caller reuses ``out``; when ``out`` is too
        small, a view of a new buffer instead. Same errors."""
        nonce = self._nonce(message, what)
        plain = memoryview(out)[: len(message) - OVERHEAD]
        body = memoryview(message)[1 + NONCE_LEN :]
        if len(plain) < len(message) - OVERHEAD:
            return memoryview(self.open(message, aad, what=what))
        try:
            if _HAS_DECRYPT_INTO:
                self._aes.decrypt_into(nonce, body, aad, plain)
            else:
                plain[:] = self._aes.decrypt(nonce, body, aad)
        except InvalidTag as exc:
            raise _damaged(what) from exc
        return plain

    @staticmethod
    def _nonce(message: bytes | memoryview, what: str) -> bytes:
        if len(message) < OVERHEAD:
            raise IntegrityError(f"{what} is truncated ({len(message)} bytes)")
        if message[0] != CIPHER_AES_256_GCM:
            raise FormatError(f"{what} uses unknown cipher id {message[0]}")
        return bytes(message[1 : 1 + NONCE_LEN])


def _damaged(what: str) -> IntegrityError:
    return IntegrityError(
        f"{what} failed authentication: it was damaged or altered",
        hint="run 'safehold check --read-data' to find all damaged data",
    )
