"""Key files are checked before anything is derived (crypto/keys.py, crypto/kdf.py): a
malformed or hostile one is a FormatError saying what is wrong, and costs no scrypt."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from safehold.crypto import kdf
from safehold.crypto.aead import Aead
from safehold.crypto.keys import (
    KEYFILE_AAD,
    KdfParams,
    MasterKey,
    make_key_file,
    open_key_file,
    parse_key_file,
)
from safehold.errors import FormatError

FAST = KdfParams(n=1 << 10)
PW = b"pw"

Edit = Callable[[dict[str, Any]], object]


def _good() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(make_key_file(MasterKey.generate(), PW, params=FAST))
    return doc


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# Each edit of a good key file, and the words the refusal must contain.
CASES: dict[str, tuple[Edit, str]] = {
    "p=300": (lambda d: d.update(n=1 << 15, p=300), "p=300"),
    "n=2**40": (lambda d: d.update(n=1 << 40), f"n={1 << 40}"),
    "n=1000": (lambda d: d.update(n=1000), "not a power of two"),
    "n=2**9": (lambda d: d.update(n=1 << 9), "outside"),
    "r=0": (lambda d: d.update(r=0), "r=0"),
    "r=2**20": (lambda d: d.update(r=1 << 20), "r="),
    "p=0": (lambda d: d.update(p=0), "p=0"),
    "n is text": (lambda d: d.update(n="32768"), "not a whole number"),
    "n is true": (lambda d: d.update(n=True), "not a whole number"),
    "n is 2.0**15": (lambda d: d.update(n=32768.0), "not a whole number"),
    "8 GiB": (lambda d: d.update(n=1 << 22, r=16, p=1), "MiB"),
    "too much work": (lambda d: d.update(n=1 << 22, r=8, p=16), "times the most"),
    "huge salt": (lambda d: d.update(salt=_b64(bytes(10_000))), "salt"),
    "short salt": (lambda d: d.update(salt=_b64(bytes(4))), "salt is 4 bytes"),
    "salt not base64": (lambda d: d.update(salt="not base64!"), "salt is not valid base64"),
    "salt a number": (lambda d: d.update(salt=5), "salt is not a string"),
    "no salt": (lambda d: d.pop("salt"), "salt missing"),
    "no n, r, p": (lambda d: [d.pop(k) for k in "nrp"], "n, r, p missing"),
    "no data": (lambda d: d.pop("data"), "data is not a string"),
    "data not base64": (lambda d: d.update(data="%%%"), "data is not valid base64"),
    "data too short": (lambda d: d.update(data=_b64(b"\x01" + bytes(20))), "too short"),
    "data huge": (lambda d: d.update(data=_b64(bytes(10_000))), "data is"),
    "unknown cipher": (
        lambda d: d.update(data=_b64(b"\x07" + base64.b64decode(d["data"])[1:])),
        "cipher id 7",
    ),
    "version 2": (lambda d: d.update(version=2), "version 2 is unknown"),
    "no version": (lambda d: d.pop("version"), "version None is unknown"),
    "kdf argon2": (lambda d: d.update(kdf="argon2id"), "kdf 'argon2id' is unknown"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_key_file_out_of_bounds_is_refused_before_deriving(
    case: str, kdf_calls: list[bytes]
) -> None:
    edit, words = CASES[case]
    doc = _good()
    kdf_calls.clear()  # making the good key file derived its key
    edit(doc)
    raw = json.dumps(doc).encode()

    with pytest.raises(FormatError) as err:
        parse_key_file(raw)
    assert words in err.value.message
    with pytest.raises(FormatError):
        open_key_file(raw, PW)
    assert kdf_calls == []  # nothing was derived


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"junk",
        b"[1, 2]",
        b'"a string"',
        b"\xff\xfe not utf-8",
        b"[" * 100_000,  # deeper than the parser goes; and larger than a key file
        b"[" * 50_000,
        b'{"version": 1',  # truncated
    ],
    ids=["empty", "junk", "list", "string", "not utf-8", "huge", "deep", "truncated"],
)
def test_what_is_not_a_key_file_is_a_format_error(raw: bytes, kdf_calls: list[bytes]) -> None:
    with pytest.raises(FormatError):
        parse_key_file(raw)
    assert kdf_calls == []


def test_a_truncated_key_file_is_a_format_error() -> None:
    raw = make_key_file(MasterKey.generate(), PW, params=FAST)
    for cut in (1, len(raw) // 2, len(raw) - 2):
        with pytest.raises(FormatError):
            parse_key_file(raw[:cut])


def test_a_key_file_that_unwraps_junk_is_a_format_error() -> None:
    # Sealed correctly under the password, but what it holds is no master key (a key file
    # written by hand, or by a broken tool): damage, not a wrong password.
    doc = _good()
    salt = base64.b64decode(doc["salt"])
    kek = Aead(FAST.derive(PW, salt))
    for plain in (b"junk", b'{"encrypt": "AAAA", "ident": "AAAA"}', b"[]"):
        doc["data"] = _b64(kek.seal(plain, KEYFILE_AAD))
        with pytest.raises(FormatError, match="master key it holds is malformed"):
            open_key_file(json.dumps(doc).encode(), PW)


@pytest.mark.parametrize(
    "params",
    [
        KdfParams(n=1 << 10),  # the tests' cheap keys (tests/conftest.py)
        KdfParams(),  # the default
        KdfParams(n=1 << 22, p=1),  # the costliest --kdf-log2n, as init calibrates it
        KdfParams(n=1 << 16, r=8, p=1),  # the default before 2026-11
        KdfParams(n=1 << 22, r=8, p=2),  # the costliest --kdf-log2n before any change
        KdfParams(n=1 << 15, r=8, p=8),  # restic's calibrated files on the reference machine
    ],
    ids=repr,
)
def test_every_key_file_safehold_writes_is_within_bounds(params: KdfParams) -> None:
    assert params.check() is None  # no derivation: 2**22 would take seconds


def test_out_of_bounds_parameters_are_never_derived(kdf_calls: list[bytes]) -> None:
    with pytest.raises(ValueError, match="p=300"):
        kdf.scrypt(PW, bytes(32), n=1 << 15, r=8, p=300, length=32)
    assert not kdf.derive_ahead(PW, bytes(32), n=1 << 15, r=8, p=300, length=32)
    assert not kdf.derive_ahead(PW, bytes(32), n=1 << 40, r=8, p=1, length=32)
    assert kdf._ahead == {}
    with pytest.raises(ValueError, match="p=300"):
        make_key_file(MasterKey.generate(), PW, params=KdfParams(n=1 << 15, p=300))
    assert kdf_calls == []
