"""scrypt and derivations started ahead of time (crypto/kdf.py)."""

from __future__ import annotations

import hashlib

import pytest

from safehold.crypto import kdf

SMALL = {"n": 1 << 10, "r": 8, "p": 2, "length": 32}


@pytest.fixture
def computed(kdf_calls: list[bytes]) -> list[bytes]:
    return kdf_calls


def test_scrypt_is_standard_scrypt() -> None:
    # Against OpenSSL's scrypt through hashlib: the same function, another build.
    want = hashlib.scrypt(b"pw", salt=b"salt" * 8, n=1 << 10, r=8, p=2, dklen=32)
    assert kdf.scrypt(b"pw", b"salt" * 8, **SMALL) == want


def test_a_derivation_ahead_is_taken_once(computed: list[bytes]) -> None:
    kdf.derive_ahead(b"pw", b"s" * 32, **SMALL)
    first = kdf.scrypt(b"pw", b"s" * 32, **SMALL)
    assert computed == [b"pw"]  # computed once, in the thread
    assert first == hashlib.scrypt(b"pw", salt=b"s" * 32, n=1 << 10, r=8, p=2, dklen=32)
    again = kdf.scrypt(b"pw", b"s" * 32, **SMALL)
    assert again == first
    assert computed == [b"pw", b"pw"]  # the entry was used up: computed directly


def test_other_inputs_do_not_take_it(computed: list[bytes]) -> None:
    kdf.derive_ahead(b"pw", b"s" * 32, **SMALL)
    other = kdf.scrypt(b"other", b"s" * 32, **SMALL)
    assert other == hashlib.scrypt(b"other", salt=b"s" * 32, n=1 << 10, r=8, p=2, dklen=32)
    assert sorted(computed) == [b"other", b"pw"]
    assert len(kdf._ahead) == 1  # still waiting for its own caller


def test_untaken_derivations_are_bounded(computed: list[bytes]) -> None:
    for i in range(kdf._MAX_AHEAD + 3):
        kdf.derive_ahead(b"pw%d" % i, b"s" * 32, **SMALL)
    assert len(kdf._ahead) == kdf._MAX_AHEAD
    assert (b"pw0", b"s" * 32, 1 << 10, 8, 2, 32) not in kdf._ahead  # oldest dropped


def test_a_failed_derivation_ahead_is_reported_by_the_real_call(computed: list[bytes]) -> None:
    bad = dict(SMALL, n=1000)  # not a power of two
    kdf.derive_ahead(b"pw", b"s" * 32, **bad)
    with pytest.raises(ValueError):
        kdf.scrypt(b"pw", b"s" * 32, **bad)
