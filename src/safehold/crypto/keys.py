"""Master keys and the password-derived key files that wrap them.

A key file is JSON (docs/format.md, "Key files") holding scrypt parameters, a salt and the
sealed master key. Its AAD binds the sealed data to the key file's format version so that a
key file cannot be replayed under another layout.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from typing import Any

import blake3

from safehold.crypto.aead import KEY_LEN, Aead
from safehold.crypto.kdf import key_file_kdf, scrypt
from safehold.errors import FormatError, IntegrityError, WrongPassword

KEYFILE_VERSION = 1
KEYFILE_AAD = b"safehold key file v1"
# The cost an attacker pays per guess: scrypt N=2**15, r=8 holds 32 MiB (restic's N and r)
# and p=2 runs it twice, about 0.1 s here. Until format note 2026-11 the default was N=2**16,
# p=1: the same sequential work in twice the memory, which set every command's peak memory
# (docs/architecture.md, "Key derivation cost").
DEFAULT_SCRYPT_N = 1 << 15
DEFAULT_SCRYPT_R = 8
DEFAULT_SCRYPT_P = 2


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True)
class MasterKey:
    """The repository's secrets: ``encrypt`` seals everything, ``ident`` keys blob ids."""

    encrypt: bytes
    ident: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(encrypt=secrets.token_bytes(KEY_LEN), ident=secrets.token_bytes(KEY_LEN))

    def aead(self) -> Aead:
        return Aead(self.encrypt)

    def blob_id(self, data: bytes | memoryview) -> bytes:
        """Keyed BLAKE3: ids say nothing about content to someone without the key."""
        return blake3.blake3(data, key=self.ident, max_threads=1).digest()

    def to_json(self) -> dict[str, str]:
        return {"encrypt": _b64(self.encrypt), "ident": _b64(self.ident)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> MasterKey:
        return cls(encrypt=_unb64(obj["encrypt"]), ident=_unb64(obj["ident"]))


@dataclass(frozen=True)
class KdfParams:
    n: int = DEFAULT_SCRYPT_N
    r: int = DEFAULT_SCRYPT_R
    p: int = DEFAULT_SCRYPT_P

    def derive(self, password: bytes, salt: bytes) -> bytes:
        return scrypt(password, salt, n=self.n, r=self.r, p=self.p, length=KEY_LEN)


def make_key_file(
    master: MasterKey,
    password: bytes,
    *,
    params: KdfParams | None = None,
    meta: dict[str, str] | None = None,
) -> bytes:
    """Seal ``master`` under ``password``; returns the key file's bytes."""
    params = params or KdfParams()
    salt = os.urandom(32)
    kek = Aead(params.derive(password, salt))
    sealed = kek.seal(json.dumps(master.to_json()).encode(), KEYFILE_AAD)
    doc = {
        "version": KEYFILE_VERSION,
        "kdf": "scrypt",
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "salt": _b64(salt),
        "data": _b64(sealed),
        **(meta or {}),
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def key_file_meta(raw: bytes) -> dict[str, Any]:
    """The unencrypted fields of a key file (created, host, user), for ``key list``."""
    try:
        doc: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise FormatError("key file is not valid JSON") from exc
    return {k: v for k, v in doc.items() if k not in ("data", "salt")}


def open_key_file(raw: bytes, password: bytes) -> MasterKey:
    """Unwrap the master key; :class:`WrongPassword` if the password does not fit."""
    try:
        doc = json.loads(raw)
        if doc.get("version") != KEYFILE_VERSION or doc.get("kdf") != "scrypt":
            raise FormatError(
                f"key file has unsupported version {doc.get('version')!r} or kdf {doc.get('kdf')!r}"
            )
        salt, n, r, p = key_file_kdf(doc)
        params = KdfParams(n=n, r=r, p=p)
        sealed = _unb64(doc["data"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError("key file is damaged (not the documented JSON layout)") from exc
    kek = Aead(params.derive(password, salt))
    try:
        plain = kek.open(sealed, KEYFILE_AAD, what="key file")
    except IntegrityError as exc:
        raise WrongPassword("wrong password for this key") from exc
    return MasterKey.from_json(json.loads(plain))
