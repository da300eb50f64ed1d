"""Master keys and the password-derived key files that wrap them.

A key file is JSON (docs/format.md, "Key files") holding scrypt parameters, a salt and the
sealed master key. Its AAD binds the sealed data to the key file's format version so that a
key file cannot be replayed under another layout.

Nothing in a key file is authenticated before its key is derived, so :func:`parse_key_file`
checks every field (and bounds the scrypt parameters, see :mod:`safehold.crypto.kdf`)
before anything is derived: a malformed or hostile key file is a :class:`FormatError`
saying what is wrong, never a traceback or minutes of work.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

import blake3

from safehold.crypto.aead import CIPHER_AES_256_GCM, KEY_LEN, OVERHEAD, Aead
from safehold.crypto.kdf import (
    KDF_LANES,
    KeyFileKdf,
    b64_field,
    check_scrypt,
    key_file_kdf,
    scrypt,
)
from safehold.errors import FormatError, IntegrityError, WrongPassword
from safehold.ids import BlobId

KEYFILE_VERSION = 1
KEYFILE_AAD = b"safehold key file v1"
# The cost an attacker pays per guess: scrypt N=2**15, r=8 holds 32 MiB per lane (restic's N
# and r). `init` and `key add` calibrate the lanes as restic calibrates p, to 0.5 s of one
# core (kdf.calibrated_lanes: 7 here); without calibration, 4. The lanes run side by side
# (scrypt-lanes), so two cores wait half that. Before 2026-12-06 the default was p=2 of RFC
# 7914's scrypt, a quarter of restic's work per guess (docs/format.md, "Cost of a guess").
DEFAULT_SCRYPT_N = 1 << 15
DEFAULT_SCRYPT_R = 8
DEFAULT_SCRYPT_P = 4
# Ours are about 500 bytes; the sealed master key about 140. Anything far larger is not one.
MAX_KEY_FILE = 64 * 1024
MAX_SEALED = 1024


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class MasterKey:
    """The repository's secrets: ``encrypt`` seals everything, ``ident`` keys blob ids."""

    encrypt: bytes
    ident: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        """A new master key from the system's random source."""
        # os.urandom is what secrets.token_bytes returns; importing secrets loads hmac and OpenSSL's
        # libcrypto (4.5 MB in every command), which nothing else needs.
        return cls(encrypt=os.urandom(KEY_LEN), ident=os.urandom(KEY_LEN))

    def aead(self) -> Aead:
        """The cipher that seals this repository's objects."""
        return Aead(self.encrypt)

    def blob_id(self, data: bytes | memoryview) -> BlobId:
        """Keyed BLAKE3: ids say nothing about content to someone without the key."""
        return BlobId(blake3.blake3(data, key=self.ident, max_threads=1).digest())

    def to_json(self) -> dict[str, str]:
        """The key as a key file stores it (inside its sealed part): two base64 keys."""
        return {"encrypt": _b64(self.encrypt), "ident": _b64(self.ident)}

    @classmethod
    def from_json(cls, obj: object) -> MasterKey:
        """ValueError unless ``obj`` holds two base64 keys of 32 bytes."""
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        encrypt, ident = b64_field(obj, "encrypt", KEY_LEN), b64_field(obj, "ident", KEY_LEN)
        if len(encrypt) != KEY_LEN or len(ident) != KEY_LEN:
            raise ValueError("the keys are not 32 bytes each")
        return cls(encrypt=encrypt, ident=ident)


@dataclass(frozen=True)
class KdfParams:
    """The derivation a new key file gets: ``kind`` is ``scrypt-lanes`` (what safehold
    writes) or ``scrypt`` (RFC 7914, what it wrote before, and restic's)."""

    n: int = DEFAULT_SCRYPT_N
    r: int = DEFAULT_SCRYPT_R
    p: int = DEFAULT_SCRYPT_P
    kind: str = KDF_LANES

    def derive(self, password: bytes, salt: bytes) -> bytes:
        """The 32-byte key that opens a key file, from ``password`` and its ``salt`` (slow on
        purpose: this is the cost of a guess)."""
        return scrypt(password, salt, n=self.n, r=self.r, p=self.p, length=KEY_LEN, kind=self.kind)

    def check(self, salt: bytes = bytes(32)) -> None:
        """ValueError if key files with these parameters would be refused when opened."""
        check_scrypt(salt, self.n, self.r, self.p)


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
    params.check(salt)  # never write a key file that would not open
    kek = Aead(params.derive(password, salt))
    sealed = kek.seal(json.dumps(master.to_json()).encode(), KEYFILE_AAD)
    doc = {
        "version": KEYFILE_VERSION,
        "kdf": params.kind,
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "salt": _b64(salt),
        "data": _b64(sealed),
        **(meta or {}),
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()


@dataclass(frozen=True)
class KeyFile:
    """A parsed key file whose fields are all within bounds; nothing derived yet."""

    kdf: KeyFileKdf
    sealed: bytes
    meta: dict[str, Any]  # the unencrypted fields (version, kdf, n, r, p, created, ...)

    def open(self, password: bytes) -> MasterKey:
        """Unwrap the master key: :class:`WrongPassword` if the password does not fit,
        :class:`FormatError` if it fits but what it unwraps is not a master key."""
        k = self.kdf
        kek = Aead(scrypt(password, k.salt, n=k.n, r=k.r, p=k.p, length=KEY_LEN, kind=k.kind))
        try:
            plain = kek.open(self.sealed, KEYFILE_AAD, what="key file")
        except IntegrityError as exc:
            raise WrongPassword("wrong password for this key") from exc
        try:
            return MasterKey.from_json(json.loads(plain))
        except (ValueError, RecursionError) as exc:
            raise FormatError(f"the master key it holds is malformed ({exc})") from exc


def parse_key_file(raw: bytes) -> KeyFile:
    """Read and check a key file without deriving anything; :class:`FormatError` saying
    what is wrong (not JSON, an unknown version or kdf, a missing field, bad base64, scrypt
    parameters or sizes out of bounds)."""
    if len(raw) > MAX_KEY_FILE:
        raise FormatError(f"{len(raw)} bytes, far more than a key file holds")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; "[[[[..." too deep
        raise FormatError("not valid JSON") from exc
    try:
        kdf = key_file_kdf(doc)
        sealed = b64_field(doc, "data", MAX_SEALED)
    except ValueError as exc:
        raise FormatError(str(exc)) from exc
    if len(sealed) <= OVERHEAD:
        raise FormatError(f"data is {len(sealed)} bytes, too short to hold a key")
    if sealed[0] != CIPHER_AES_256_GCM:
        raise FormatError(f"data is sealed with unknown cipher id {sealed[0]}")
    meta = {k: v for k, v in doc.items() if k not in ("data", "salt")}
    return KeyFile(kdf=kdf, sealed=sealed, meta=meta)


def key_file_meta(raw: bytes) -> dict[str, Any]:
    """The unencrypted fields of a key file (created, host, user, scrypt parameters), for
    ``key list``; :class:`FormatError` if it is malformed (see :func:`parse_key_file`)."""
    return parse_key_file(raw).meta


def open_key_file(raw: bytes, password: bytes) -> MasterKey:
    """Unwrap the master key; :class:`WrongPassword` if the password does not fit,
    :class:`FormatError` if the key file is malformed (nothing is derived then)."""
    return parse_key_file(raw).open(password)
