"""scrypt, in lanes computed side by side, and deriving a key ahead of time while the
program starts.

Two key derivations exist (docs/format.md, "Key files"). ``scrypt`` is RFC 7914's, whose
``p`` lanes OpenSSL computes one after the other. ``scrypt-lanes``, what safehold writes
since 2026-12-06, computes ``p`` independent scrypt(n, r, 1) lanes, each over the salt
followed by the lane's number, on as many cores as the machine has (up to
:data:`MAX_THREADS`), and combines their outputs with HKDF-SHA256. A guess costs an
attacker the same as one of RFC 7914's with the same ``n, r, p`` (every lane must be
computed, each holding ``128 * n * r`` bytes), while a command on two cores waits half as
long: that is what pays for matching restic's calibrated cost (:func:`calibrated_lanes`).

Deriving the key-encryption key of a key file is the longest single step of opening a
repository (about 0.13 s here at the default cost, with a core to itself), and it needs
only the password and the key file's salt and parameters. :func:`derive_ahead` starts it
in a thread as soon as those are known, before the modules a command needs have been
imported; :func:`scrypt` called later with the same inputs takes that result instead of
computing it again. Only exactly equal inputs match, so a guess that turns out wrong
(another key file, another password) costs a derivation on an otherwise idle core and
changes nothing else.

This module imports only the standard library until it computes, so that the command line
can use it before anything heavy is loaded; scrypt itself (libsodium's through PyNaCl or
OpenSSL's through ``hashlib``, whichever a probe finds faster here) releases the
interpreter lock while it runs.

A key file's parameters are not authenticated (they are what derives the key that
authenticates the rest), so anyone who can write to ``keys/`` chooses them. Nothing here
derives with parameters outside :func:`check_scrypt`'s bounds, and :func:`key_file_kdf`
refuses a key file with them before any work starts: otherwise one extra key file could make
every command take minutes, or exhaust memory (docs/format.md, "Key files").
"""

from __future__ import annotations

import base64
import functools
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KDF_LANES",
    "KDF_SCRYPT",
    "KEK_LEN",
    "KeyFileKdf",
    "calibrated_lanes",
    "check_scrypt",
    "derive_ahead",
    "key_file_kdf",
    "lanes_for",
    "scrypt",
]

KEK_LEN = 32  # bytes of a key file's key-encryption key (an AES-256 key)
KDF_SCRYPT = "scrypt"  # RFC 7914, lanes one after the other
KDF_LANES = "scrypt-lanes"  # independent scrypt(n, r, 1) lanes side by side, then HKDF
KDFS = (KDF_SCRYPT, KDF_LANES)
LANES_INFO = b"safehold scrypt-lanes v1"
# Lanes computed at once: each holds 128 * n * r bytes (32 MiB at the default), so a machine
# with many cores is not asked for a gigabyte to open a repository.
MAX_THREADS = 4

# Bounds on what a key file may ask for (docs/format.md, "Key files"). They admit every key
# file safehold has written: `init/key add --kdf-log2n` 10 to 22 with r=8 and p=1 or 2
# (2**22 with r=8 is a 4 GiB working set), and restic's calibrated parameters (N=2**15, r=8,
# p=8 on the reference machine). What lies beyond is refused before deriving.
MIN_N = 1 << 10
MAX_N = 1 << 22
MAX_R = 32
MAX_P = 16
MAX_MEMORY = 4 << 30  # bytes: scrypt's working set is 128 * n * r
MAX_WORK = (1 << 22) * 8 * 2  # n * r * p: the costliest key file --kdf-log2n writes
MIN_SALT, MAX_SALT = 16, 64  # bytes (safehold writes 32)
# hashlib.scrypt refuses a maxmem of 2 GiB or more (a C int); larger working sets (n = 2**22
# with r = 8: 4 GiB) go through cryptography's binding of the same OpenSSL function.
HASHLIB_MAXMEM = (1 << 31) - 1

# Inputs -> (done, result). An entry is taken by the first scrypt() call that matches it.
_Inputs = tuple[bytes, bytes, int, int, int, int, str]
_ahead: dict[_Inputs, tuple[threading.Event, list[bytes]]] = {}
_lock = threading.Lock()
# Entries nobody took (the command failed before opening the repository) are dropped
# beyond this many, oldest first: a process that runs many commands keeps no backlog.
_MAX_AHEAD = 4


def _compute(
    password: bytes, salt: bytes, n: int, r: int, p: int, length: int, kind: str = KDF_SCRYPT
) -> bytes:
    if kind == KDF_SCRYPT:
        return _scrypt(password, salt, n, r, p, length)
    if kind != KDF_LANES:
        raise ValueError(f"kdf {kind!r} is unknown")

    def lane(i: int) -> bytes:
        return _scrypt(password, salt + i.to_bytes(4, "big"), n, r, 1, KEK_LEN)

    outputs = _side_by_side(lane, p, _threads(p))
    return _combine(b"".join(outputs), salt, length)


Scrypt = Callable[[bytes, bytes, int, int, int, int], bytes]  # password, salt, n, r, p, length

# The implementation this process found faster (:func:`_fastest`), chosen at first use.
_chosen: list[Scrypt] = []
_choosing = threading.Lock()
# The probe: a lane small enough to cost about a millisecond, run twice by each.
PROBE_N, PROBE_R, PROBE_RUNS = 1 << 9, 8, 2


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    """RFC 7914's scrypt, by whichever of libsodium's (through PyNaCl) and OpenSSL's
    (through ``hashlib``) runs faster on this machine: the same function either way
    (tests/unit/crypto compares them), and both release the interpreter lock while they
    run. Which is faster depends on the processor: a lane of the default cost (2**15 x 8)
    took 62 ms by libsodium against 81 ms by OpenSSL on one machine, 89 ms against 62 ms
    on another (an AMD EPYC with AVX-512), 60-70 ms against 97-115 ms on a third, and every
    command derives 4-9 of them. Imported lazily: the module stays light for the command
    line's early start. hashlib refuses working sets of 2 GiB or more (``init --kdf-log2n
    22``): those go through ``cryptography``'s binding of OpenSSL's."""
    return _implementation()(password, salt, n, r, p, length)


def _implementation() -> Scrypt:
    """The implementation :func:`_scrypt` uses, chosen once per process (lanes that start
    side by side wait for the one probe)."""
    with _choosing:
        if not _chosen:
            found = _implementations()
            _chosen.append(found[0] if len(found) == 1 else _fastest(found))
        return _chosen[0]


def _implementations() -> list[Scrypt]:
    """The scrypt implementations this environment has: OpenSSL's always, libsodium's
    where PyNaCl offers it."""
    found: list[Scrypt] = [_by_openssl]
    if _sodium_scrypt() is not None:
        found.append(_by_sodium)
    return found


def _fastest(candidates: list[Scrypt], timer: Callable[[], float] | None = None) -> Scrypt:
    """The candidate that computes the probe's lane soonest, best of :data:`PROBE_RUNS`
    each (about 4 ms in all). A lane this small stays in the processor's cache, where the
    two implementations differ the most (2x on the EPYC, 1.4x at the default cost, in the
    same direction); a wrong pick on a busy machine costs time, never a different key."""

    # The thread's CPU time, not the wall clock: the probe runs while the command line
    # imports its modules, and a wall clock also counted the waits for the interpreter
    # lock after each call (1 pick in 20 went wrong that way).
    clock = timer or time.thread_time

    def best(candidate: Scrypt) -> float:
        took = float("inf")
        for _ in range(PROBE_RUNS):
            started = clock()
            candidate(b"probe", bytes(MIN_SALT), PROBE_N, PROBE_R, 1, KEK_LEN)
            took = min(took, clock() - started)
        return took

    return min(candidates, key=best)


def _by_openssl(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    held = _held(n, r, p)
    if held < HASHLIB_MAXMEM:
        # The standard library's binding of OpenSSL: loaded in a millisecond, where importing
        # cryptography's takes tens of them of the interpreter lock while the command line
        # imports its own modules (the first lanes waited for it).
        import hashlib

        return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=held, dklen=length)
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt as OpenSslScrypt

    return OpenSslScrypt(salt=salt, length=length, n=n, r=r, p=p).derive(password)


def _held(n: int, r: int, p: int) -> int:
    """What scrypt holds at once (V: 128 * r * (n + 2), B: 128 * r * p), and a MiB more for
    the implementations' own small buffers: the ``maxmem`` that admits exactly the inputs
    :func:`check_scrypt` has bounded."""
    return 128 * r * (n + 2 + p) + (1 << 20)


def _by_sodium(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    sodium = _sodium_scrypt()
    assert sodium is not None, "only offered where PyNaCl has scrypt"
    ffi, lib = sodium
    out = ffi.new("uint8_t[]", length)
    pw, s = bytes(password), bytes(salt)
    if lib.crypto_pwhash_scryptsalsa208sha256_ll(pw, len(pw), s, len(s), n, r, p, out, length):
        raise MemoryError(f"libsodium could not hold scrypt's {_held(n, r, p) >> 20} MiB")
    return bytes(ffi.buffer(out, length))


@functools.cache
def _sodium_scrypt() -> tuple[Any, Any] | None:
    """PyNaCl's compiled binding of libsodium (its ``ffi`` and ``lib``), initialised, or
    None (PyNaCl missing, or built without scrypt: a "minimal" libsodium).

    The binding itself, not ``nacl.bindings``: that package imports a module per libsodium
    family (15 ms of the interpreter lock, while the command line imports its own), where
    this is one call; the call releases the lock as the package's does (cffi's default).
    Looked up once (two threads starting together may both look: the same answer)."""
    try:
        from nacl._sodium import ffi, lib  # type: ignore[import-not-found]  # compiled, no stubs
    except ImportError:
        return None
    if not getattr(lib, "PYNACL_HAS_CRYPTO_PWHASH_SCRYPTSALSA208SHA256", 0):
        return None
    # Selects libsodium's implementations for this processor (its SSE2 scrypt); without it
    # the portable one runs. Idempotent and thread-safe; -1 is failure.
    if lib.sodium_init() == -1:
        return None
    return ffi, lib


def _threads(lanes: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(lanes, cores, MAX_THREADS))


def _side_by_side(lane: Callable[[int], bytes], lanes: int, threads: int) -> list[bytes]:
    """``lane(i)`` for every lane, on ``threads`` threads (both scrypts release the
    interpreter lock); the first failure is raised once all have ended. Each thread takes
    the next lane not yet taken: one that started late (its core busy with the command's
    imports) computes fewer, instead of the others waiting for its share."""
    outputs: list[bytes | None] = [None] * lanes
    failures: list[BaseException] = []
    numbers = iter(range(lanes))  # each number taken once, under ``taken``
    taken = threading.Lock()

    def work() -> None:
        try:
            while not failures:
                with taken:
                    i = next(numbers, None)
                if i is None:
                    return
                outputs[i] = lane(i)
        except BaseException as exc:  # raised in the caller's thread below
            failures.append(exc)

    helpers = [threading.Thread(target=work, name="kdf-lane") for _ in range(1, threads)]
    for h in helpers:
        h.start()
    work()
    for h in helpers:
        h.join()
    if failures:
        raise failures[0]
    done = [out for out in outputs if out is not None]
    assert len(done) == lanes, "every lane is computed by exactly one thread"
    return done


def _combine(lanes: bytes, salt: bytes, length: int) -> bytes:
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=SHA256(), length=length, salt=salt, info=LANES_INFO).derive(lanes)


def calibrated_lanes(n: int, r: int, *, budget: float = 0.5, least: int = 4) -> int:
    """How many lanes of scrypt(n, r, 1) one core computes in ``budget`` seconds here:
    restic calibrates ``p`` to 0.5 s of its own (pure Go) scrypt on the machine that runs
    ``init``, so the same budget of OpenSSL's is at least restic's cost per guess. At least
    ``least`` lanes, fewer only where the work bound allows no more (n = 2**22).

    Measured with OpenSSL's scrypt even where keys are derived with libsodium's (where a
    probe finds it faster, :func:`_scrypt`): the aim is restic's choice of ``p``, whose Go
    scrypt runs at about OpenSSL's speed (both chose 7 lanes on one machine, 9 on
    another); measuring the faster one would choose more lanes and take the time it saves
    back from every command.

    Measured on one lane of at most 2**15 (a lane's time grows with ``n``, and one of 2**22
    takes seconds), the faster of two runs: a busy machine would otherwise choose fewer."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    probe = min(n, 1 << 15)
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        Scrypt(salt=bytes(32), length=KEK_LEN, n=probe, r=r, p=1).derive(b"calibration")
        best = min(best, time.perf_counter() - started)
    return lanes_for(best * n / probe, budget=budget, least=least, most=MAX_WORK // (n * r))


def lanes_for(
    lane_seconds: float, *, budget: float = 0.5, least: int = 4, most: int = MAX_P
) -> int:
    """The lanes :func:`calibrated_lanes` chooses for one lane taking ``lane_seconds``:
    enough to fill ``budget``, at least ``least``, at most ``most`` and :data:`MAX_P`."""
    fit = math.ceil(budget / lane_seconds) if lane_seconds > 0 else MAX_P
    return max(1, min(MAX_P, most, max(least, fit)))


def check_scrypt(salt: bytes, n: int, r: int, p: int) -> None:
    """Raise ValueError, saying what is wrong, unless these inputs are within the bounds
    above: a power-of-two ``n``, ``r`` and ``p`` that keep the working set and the work per
    derivation within what safehold writes, and a salt of a sensible length."""
    for name, value in (("n", n), ("r", r), ("p", p)):
        if type(value) is not int:  # not isinstance: JSON's true is an int too
            raise ValueError(f"scrypt {name}={value!r} is not a whole number")
    if n < 2 or n & (n - 1):
        raise ValueError(f"scrypt n={n} is not a power of two")
    if not MIN_N <= n <= MAX_N:
        raise ValueError(f"scrypt n={n} is outside 2**10 to 2**22")
    if not 1 <= r <= MAX_R:
        raise ValueError(f"scrypt r={r} is outside 1 to {MAX_R}")
    if not 1 <= p <= MAX_P:
        raise ValueError(f"scrypt p={p} is outside 1 to {MAX_P}")
    if 128 * n * r > MAX_MEMORY:
        raise ValueError(
            f"scrypt n={n}, r={r} needs {128 * n * r >> 20} MiB, more than {MAX_MEMORY >> 20} MiB"
        )
    if n * r * p > MAX_WORK:
        raise ValueError(
            f"scrypt n={n}, r={r}, p={p} costs {n * r * p / MAX_WORK:.0f} times the most "
            "any key file safehold writes"
        )
    if not MIN_SALT <= len(salt) <= MAX_SALT:
        raise ValueError(f"the salt is {len(salt)} bytes, not {MIN_SALT} to {MAX_SALT}")


def scrypt(
    password: bytes, salt: bytes, *, n: int, r: int, p: int, length: int, kind: str = KDF_SCRYPT
) -> bytes:
    """scrypt(password, salt, n, r, p) of ``length`` bytes: RFC 7914's for ``kind``
    ``scrypt``, ``p`` lanes side by side for ``scrypt-lanes``; ValueError for inputs
    outside :func:`check_scrypt`'s bounds."""
    check_scrypt(salt, n, r, p)
    with _lock:
        pending = _ahead.pop((password, salt, n, r, p, length, kind), None)
    if pending is not None:
        done, result = pending
        done.wait()
        if result:
            return result[0]
    return _compute(password, salt, n, r, p, length, kind)


def derive_ahead(
    password: bytes, salt: bytes, *, n: int, r: int, p: int, length: int, kind: str = KDF_SCRYPT
) -> bool:
    """Start scrypt of these inputs in a thread, for a later :func:`scrypt` to take;
    returns whether it started (never for inputs outside :func:`check_scrypt`'s bounds)."""
    try:
        check_scrypt(salt, n, r, p)
    except ValueError:
        return False
    if kind not in KDFS:
        return False
    key = (password, salt, n, r, p, length, kind)
    done, result = threading.Event(), []

    def run() -> None:
        try:
            result.append(_compute(password, salt, n, r, p, length, kind))
        except Exception:
            pass  # best effort: the later call computes it again and reports the problem
        finally:
            done.set()

    with _lock:
        if key in _ahead:
            return True
        while len(_ahead) >= _MAX_AHEAD:
            del _ahead[next(iter(_ahead))]
        _ahead[key] = (done, result)
    threading.Thread(target=run, name="derive-ahead", daemon=True).start()
    return True


@dataclass(frozen=True)
class KeyFileKdf:
    """What derives a key file's key-encryption key: scrypt's salt and parameters, and
    whether its lanes run one after the other (``scrypt``) or side by side."""

    salt: bytes
    n: int
    r: int
    p: int
    kind: str = KDF_SCRYPT

    @property
    def cost(self) -> tuple[int, int]:
        """Work, then memory: opening tries the cheapest key files first."""
        return self.n * self.r * self.p, self.n * self.r


def key_file_kdf(doc: object) -> KeyFileKdf:
    """The scrypt inputs of a key file's parsed JSON (docs/format.md, "Key files"), checked
    against :func:`check_scrypt`'s bounds; ValueError saying what is wrong otherwise (an
    unknown version or kdf, a missing or malformed field, parameters out of bounds)."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if doc.get("version") != 1:
        raise ValueError(f"version {doc.get('version')!r} is unknown (this safehold reads 1)")
    if doc.get("kdf") not in KDFS:
        raise ValueError(
            f"kdf {doc.get('kdf')!r} is unknown (this safehold knows {' and '.join(KDFS)})"
        )
    missing = [k for k in ("n", "r", "p", "salt") if k not in doc]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing")
    salt = b64_field(doc, "salt", MAX_SALT)
    kdf = KeyFileKdf(salt=salt, n=doc["n"], r=doc["r"], p=doc["p"], kind=doc["kdf"])
    check_scrypt(kdf.salt, kdf.n, kdf.r, kdf.p)
    return kdf


def b64_field(doc: dict[str, Any], name: str, max_len: int) -> bytes:
    """The base64 field ``name`` of ``doc``, decoded; ValueError if it is not base64 or
    decodes to more than ``max_len`` bytes (checked before decoding)."""
    text = doc.get(name)
    if not isinstance(text, str):
        raise ValueError(f"{name} is not a string")
    if len(text) > 4 * ((max_len + 2) // 3):
        raise ValueError(f"{name} is {len(text)} characters long, too long")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeError) as exc:  # binascii.Error is a ValueError
        raise ValueError(f"{name} is not valid base64") from exc
