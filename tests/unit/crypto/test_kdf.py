"""scrypt and derivations started ahead of time (crypto/kdf.py)."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

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
    oldest = (b"pw0", b"s" * 32, 1 << 10, 8, 2, 32, kdf.KDF_SCRYPT)
    assert oldest not in kdf._ahead  # dropped


def test_a_failed_derivation_ahead_is_reported_by_the_real_call(computed: list[bytes]) -> None:
    bad = dict(SMALL, n=1000)  # not a power of two
    kdf.derive_ahead(b"pw", b"s" * 32, **bad)
    with pytest.raises(ValueError):
        kdf.scrypt(b"pw", b"s" * 32, **bad)


def _lanes_by_hand(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """scrypt-lanes as docs/format.md writes it, from hashlib's scrypt and an HKDF written
    out (RFC 5869) with hmac: another build of every piece."""
    import hmac

    lanes = b"".join(
        hashlib.scrypt(password, salt=salt + i.to_bytes(4, "big"), n=n, r=r, p=1, dklen=32)
        for i in range(p)
    )
    prk = hmac.digest(salt, lanes, "sha256")
    return hmac.digest(prk, kdf.LANES_INFO + b"\x01", "sha256")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_lanes_side_by_side_are_the_documented_function(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kdf, "_threads", lambda lanes: min(lanes, threads))
    salt = b"salt" * 8
    got = kdf.scrypt(b"pw", salt, n=1 << 10, r=8, p=5, length=32, kind=kdf.KDF_LANES)
    assert got == _lanes_by_hand(b"pw", salt, 1 << 10, 8, 5)
    # Not RFC 7914's scrypt with the same parameters, and every lane counts.
    assert got != kdf.scrypt(b"pw", salt, n=1 << 10, r=8, p=5, length=32)
    assert got != _lanes_by_hand(b"pw", salt, 1 << 10, 8, 4)


def test_a_failing_lane_fails_the_derivation() -> None:
    def lane(i: int) -> bytes:
        if i == 3:
            raise MemoryError("no memory for lane 3")
        return bytes([i])

    with pytest.raises(MemoryError, match="lane 3"):
        kdf._side_by_side(lane, 5, 2)
    assert kdf._side_by_side(lambda i: bytes([i]), 5, 2) == [bytes([i]) for i in range(5)]


def test_lanes_are_derived_ahead_too(computed: list[bytes]) -> None:
    lanes = dict(SMALL, kind=kdf.KDF_LANES)
    kdf.derive_ahead(b"pw", b"s" * 32, **lanes)  # type: ignore[arg-type]
    got = kdf.scrypt(b"pw", b"s" * 32, **lanes)  # type: ignore[arg-type]
    assert computed == [b"pw"]
    assert got == _lanes_by_hand(b"pw", b"s" * 32, 1 << 10, 8, 2)
    # RFC 7914's derivation of the same inputs is another entry: not taken by the lanes'.
    kdf.derive_ahead(b"pw", b"s" * 32, **SMALL)
    kdf.scrypt(b"pw", b"s" * 32, **lanes)  # type: ignore[arg-type]
    assert computed == [b"pw", b"pw", b"pw"] and len(kdf._ahead) == 1


@pytest.mark.parametrize(
    ("lane_seconds", "lanes"),
    [(0.085, 6), (0.1, 5), (0.125, 4), (0.3, 4), (0.01, 16), (0.0, 16)],
)
def test_calibration_fills_restics_budget(lane_seconds: float, lanes: int) -> None:
    # restic's budget is 0.5 s of one core; never fewer than 4 lanes, never beyond the bound.
    assert kdf.lanes_for(lane_seconds) == lanes


def test_calibration_of_large_lanes_stays_within_the_work_bound() -> None:
    # n = 2**22: one lane is the most the work bound (and a sensible wait) allows.
    most = kdf.MAX_WORK // ((1 << 22) * 8)
    assert most == 2
    assert kdf.lanes_for(11.0, least=1, most=most) == 1
    assert kdf.lanes_for(0.01, least=1, most=most) == 2
    assert kdf.lanes_for(11.0, least=4, most=most) == 2  # the bound comes before the least


def test_calibration_measures_this_machine() -> None:
    lanes = kdf.calibrated_lanes(1 << 10, 8)  # a lane of 2**10 takes milliseconds
    assert lanes == kdf.MAX_P


def test_libsodium_and_openssl_compute_the_same_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys are derived by whichever of libsodium's and OpenSSL's scrypt is faster on the
    machine, so the two must be one function exactly: a repository opens on either."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    assert kdf._sodium_scrypt() is not None  # PyNaCl is a dependency
    assert kdf._implementations() == [kdf._by_openssl, kdf._by_sodium]
    for n, r, p, length in [(1 << 10, 8, 1, 32), (1 << 11, 4, 3, 64), (1 << 10, 1, 16, 17)]:
        salt = bytes(range(n % 251, n % 251 + 40))
        want = Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(b"pass phrase")
        assert kdf._by_sodium(b"pass phrase", salt, n, r, p, length) == want
        assert kdf._by_openssl(b"pass phrase", salt, n, r, p, length) == want
        assert kdf._scrypt(b"pass phrase", salt, n, r, p, length) == want
    # A password in a bytearray (bytes-like, as cryptography's scrypt takes it) too.
    for implementation in kdf._implementations():
        assert implementation(bytearray(b"pw"), b"s" * 32, 1 << 10, 8, 1, 32) == kdf._scrypt(
            b"pw", b"s" * 32, 1 << 10, 8, 1, 32
        )
    # Whichever this process chose, and without PyNaCl (missing or minimal): the same keys.
    lanes = {"n": 1 << 10, "r": 8, "p": 3, "length": 32, "kind": kdf.KDF_LANES}
    chosen = kdf.scrypt(b"pw", b"s" * 32, **lanes)  # type: ignore[arg-type]
    monkeypatch.setattr(kdf, "_sodium_scrypt", lambda: None)
    monkeypatch.setattr(kdf, "_chosen", [])
    assert kdf._implementations() == [kdf._by_openssl]
    assert kdf.scrypt(b"pw", b"s" * 32, **lanes) == chosen  # type: ignore[arg-type]
    assert kdf._chosen == [kdf._by_openssl]
    assert chosen == _lanes_by_hand(b"pw", b"s" * 32, 1 << 10, 8, 3)


@pytest.mark.parametrize("slow", [0, 1])
def test_the_faster_implementation_is_chosen_once(
    monkeypatch: pytest.MonkeyPatch, slow: int
) -> None:
    """The probe times each candidate (a clock that each call advances by its cost here)
    and keeps the faster, whichever comes first; later derivations do not probe again."""
    now = [0.0]
    calls: list[str] = []

    def candidate(name: str, cost: float) -> kdf.Scrypt:
        def compute(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
            calls.append(name)
            now[0] += cost
            return name.encode() * length

        return compute

    costs = [0.002, 0.002]
    costs[slow] = 0.005
    found = [candidate("first", costs[0]), candidate("second", costs[1])]
    fast = found[1 - slow]
    assert kdf._fastest(found, timer=lambda: now[0]) is fast
    assert calls == ["first"] * kdf.PROBE_RUNS + ["second"] * kdf.PROBE_RUNS

    monkeypatch.setattr(kdf, "_implementations", lambda: list(found))
    monkeypatch.setattr(kdf, "_chosen", [])
    monkeypatch.setattr(kdf.time, "thread_time", lambda: now[0])
    calls.clear()
    winner = "second" if slow == 0 else "first"
    assert kdf._scrypt(b"pw", b"s" * 32, 1 << 10, 8, 1, 4) == winner.encode() * 4
    assert len(calls) == 2 * kdf.PROBE_RUNS + 1
    calls.clear()
    kdf._scrypt(b"pw", b"s" * 32, 1 << 10, 8, 1, 4)
    assert calls == [winner]


def test_working_sets_beyond_hashlibs_bound_go_through_cryptography(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hashlib.scrypt refuses a maxmem of 2 GiB or more; those derivations (n = 2**22 with
    r = 8) take cryptography's binding of the same OpenSSL function: the same result."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    salt, n, r, p = b"s" * 32, 1 << 10, 8, 2
    want = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(b"pw")
    used: list[str] = []
    real = hashlib.scrypt

    def counted(*args: Any, **kwargs: Any) -> bytes:
        used.append("hashlib")
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counted)
    assert kdf._by_openssl(b"pw", salt, n, r, p, 32) == want
    assert used == ["hashlib"]
    monkeypatch.setattr(kdf, "HASHLIB_MAXMEM", kdf._held(n, r, p))  # as if 2 GiB were needed
    assert kdf._by_openssl(b"pw", salt, n, r, p, 32) == want
    assert used == ["hashlib"]


def test_a_thread_that_starts_late_computes_fewer_lanes() -> None:
    """Lanes go to whichever thread is free: while one thread's first lane is held up (its
    core busy), the other computes the rest, and every lane is computed once."""
    held = threading.Event()
    by: dict[int, str] = {}

    def lane(i: int) -> bytes:
        by[i] = threading.current_thread().name
        if i == 0:
            assert held.wait(5), "the other thread finished the rest"
        elif len(by) == 5:
            held.set()
        return bytes([i])

    assert kdf._side_by_side(lane, 5, 2) == [bytes([i]) for i in range(5)]
    assert sorted(by) == [0, 1, 2, 3, 4]
    assert {by[i] for i in range(1, 5)} == {by[1]} != {by[0]}
