"""Authenticated encryption with associated data (AEAD) for blobs and objects.

Layout of one sealed message (docs/format.md, "Sealed message")::

    cipher id (1) | nonce (12) | ciphertext | tag (16)

Ciphers are registered by id so that a repository can move to another one without
guessing. Nonces are random: with 96-bit nonces the collision bound for one key is reached
after about 2**32 messages, far beyond one repository's blob count in practice; the format
document states this limit.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from safehold.errors import FormatError, IntegrityError

CIPHER_AES_256_GCM = 1
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = 1 + NONCE_LEN + TAG_LEN
KEY_LEN = 32


class Aead:
    """Seals and opens messages under one 32-byte key. Thread-safe (no shared state)."""

    __slots__ = ("_aes",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("AEAD keys are 32 bytes")
        self._aes = AESGCM(key)

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        head, body = self.seal_parts(plaintext, aad)
        return head + body

    def seal_parts(self, plaintext: bytes | memoryview, aad: bytes) -> tuple[bytes, bytes]:
        """The sealed message as ``(cipher id | nonce, ciphertext | tag)``, so that a caller
        appending it to a larger buffer saves a copy of the ciphertext."""
        nonce = os.urandom(NONCE_LEN)
        return b"\x01" + nonce, self._aes.encrypt(nonce, plaintext, aad)

    def open(self, message: bytes | memoryview, aad: bytes, *, what: str = "object") -> bytes:
        if len(message) < OVERHEAD:
            raise IntegrityError(f"{what} is truncated ({len(message)} bytes)")
        if message[0] != CIPHER_AES_256_GCM:
            raise FormatError(f"{what} uses unknown cipher id {message[0]}")
        nonce = bytes(message[1 : 1 + NONCE_LEN])
        try:
            return self._aes.decrypt(nonce, message[1 + NONCE_LEN :], aad)
        except InvalidTag as exc:
            raise IntegrityError(
                f"{what} failed authentication: it was damaged or altered",
                hint="run 'safehold check --read-data' to find all damaged data",
            ) from exc
