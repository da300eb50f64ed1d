"""The cipher of ``openssl enc -aes-256-cbc -pbkdf2 -iter 200000 -md sha256``, byte for byte.

Plain archives (``safehold.archive``) are encrypted with it so that stock tools reverse
them: ``Salted__``, an 8-byte random salt, then AES-256-CBC with PKCS#7 padding, key and IV
(48 bytes) from PBKDF2-HMAC-SHA256 over the passphrase and salt. It is not the repository's
cipher (``aead.py``): CBC authenticates nothing, so a caller must check the stored bytes
another way before it decrypts them (the archive's ``.sha256`` file, docs/storage/archive.md),
and a wrong passphrase shows only as invalid padding at the end or as garbage.
"""

from __future__ import annotations

import secrets
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from safehold.errors import IntegrityError, WrongPassword

__all__ = ["MAGIC", "PBKDF2_ITERATIONS", "DecryptingReader", "Encrypter", "derive"]

PBKDF2_ITERATIONS = 200_000
MAGIC = b"Salted__"
_PIECE = 8 << 20  # what a read of "everything" takes from the raw stream at a time


def derive(passphrase: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """The AES-256 key and the CBC IV for ``passphrase`` and ``salt``, as openssl derives
    them with ``-pbkdf2 -iter 200000 -md sha256``."""
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=48, salt=salt, iterations=PBKDF2_ITERATIONS)
    material = kdf.derive(passphrase)
    return material[:32], material[32:]


class Encrypter:
    """Encrypts one stream under a fresh salt: ``header`` first, then what ``update`` and
    ``finalize`` return, in order."""

    def __init__(self, passphrase: bytes) -> None:
        salt = secrets.token_bytes(8)
        key, iv = derive(passphrase, salt)
        self.header = MAGIC + salt
        self._enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self._pad = padding.PKCS7(128).padder()

    def update(self, data: bytes) -> bytes:
        """Ciphertext for ``data`` (whole blocks only; the rest waits for more data or finalize)."""
        return self._enc.update(self._pad.update(data))

    def finalize(self) -> bytes:
        """The last, padded block; nothing may be encrypted after it."""
        return self._enc.update(self._pad.finalize()) + self._enc.finalize()


class DecryptingReader:
    """A reader that undoes the ``openssl enc`` framing of ``raw``.

    ``derived`` caches key and IV by salt, so that a caller reading the same stream twice
    runs PBKDF2 once.
    """

    def __init__(
        self, raw: BinaryIO, passphrase: bytes, derived: dict[bytes, tuple[bytes, bytes]]
    ) -> None:
        head = raw.read(16)
        if len(head) < 16 or not head.startswith(MAGIC):
            raise IntegrityError("the archive is not in openssl 'Salted__' format")
        salt = head[8:16]
        if salt not in derived:  # PBKDF2 once per restore, not once per pass
            derived[salt] = derive(passphrase, salt)
        key, iv = derived[salt]
        self._raw = raw
        self._dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._unpad = padding.PKCS7(128).unpadder()
        self._done = False

    def read(self, n: int = -1) -> bytes:
        """The plaintext of the next ``max(n, 16)`` stored bytes (``_PIECE`` of them when ``n``
        is negative), so not exactly ``n`` bytes; ``b""`` after the end. Raises
        :class:`WrongPassword` when the final padding is invalid."""
        if self._done:
            return b""
        piece = self._raw.read(_PIECE if n < 0 else max(n, 16))
        if piece:
            return self._unpad.update(self._dec.update(piece))
        self._done = True
        try:
            return self._unpad.update(self._dec.finalize()) + self._unpad.finalize()
        except ValueError as exc:
            raise WrongPassword(
                "the archive passphrase is wrong (the decrypted padding is invalid)",
                hint="give the passphrase the archive destination was configured with",
            ) from exc
