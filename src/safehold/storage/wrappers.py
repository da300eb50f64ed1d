"""Wrappers that add one cross-cutting behaviour to any :class:`Storage`.

Each wrapper is itself a ``Storage``, so they compose::

    RetryingStorage(LimitedStorage(S3Storage(...), 16), attempts=5)

Only the composition root (:mod:`safehold.app`) chooses the stack; backends merely classify
their errors as transient or permanent, and retrying lives here alone.

* :class:`RetryingStorage` retries :class:`TransientStorageError` with exponential backoff.
* :class:`LimitedStorage` bounds the number of calls in flight.
* :class:`FaultyStorage` injects failures, truncation, corruption and delays for tests.
"""

from __future__ import annotations

import builtins
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from safehold.errors import (
    ObjectExists,
    ObjectNotFound,
    StorageFull,
    TransientStorageError,
)
from safehold.model import ObjectInfo
from safehold.storage.base import Storage
from safehold.storage.capabilities import read_into, retention_keeper

__all__ = [
    "ALL_OPS",
    "FaultyStorage",
    "LimitedStorage",
    "Match",
    "Op",
    "RetryEvent",
    "RetryingStorage",
]

T = TypeVar("T")
Op = Literal["put", "get", "stat", "list", "delete"]
ALL_OPS: tuple[Op, ...] = ("put", "get", "stat", "list", "delete")
#: Which names a rule applies to: a name prefix, a predicate, or ``None`` for all names.
Match = str | Callable[[str], bool] | None


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Passed to ``on_retry`` before each backoff sleep."""

    op: str
    name: str
    attempt: int  # the attempt that just failed, counting from 1
    delay: float  # seconds slept before the next attempt
    error: TransientStorageError


class RetryingStorage:
    """Retry transient failures with exponential backoff and full jitter.

    Attempt ``k`` (from 1) that fails transiently is followed by a sleep drawn uniformly
    from ``[0, min(max_delay, base_delay * 2**(k-1))]``; full jitter spreads out clients that
    failed together. Permanent errors pass straight through; after ``attempts`` transient
    failures the last one is re-raised.

    **Ambiguous retries.** A transient error can hide a call that did land (the reply was
    lost). For idempotent calls that does not matter; for the other two:

    * ``put(exclusive=True)`` that gets :class:`ObjectExists` after an earlier transient
      failure *of the same call* reads the object back: identical content is taken as our
      own earlier attempt and reported as success, different content raises
      ``ObjectExists``. Another writer putting byte-identical content in that window would
      also count as success; for content-addressed objects and for lock files (which embed a
      random id) that is either harmless or impossible.
    * ``delete`` that gets :class:`ObjectNotFound` after an earlier transient failure of
      the same call is taken as success: the earlier attempt removed it.

    ``list`` is materialised inside the retry loop so that a retried listing never yields
    an object twice.
    """

    def __init__(
        self,
        inner: Storage,
        *,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[RetryEvent], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self._attempts = attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._sleep = sleep
        self._on_retry = on_retry
        self._rng = rng or random.Random()

    def _retry(self, op: str, name: str, call: Callable[[], T]) -> T:
        attempt = 1
        while True:
            try:
                return call()
            except TransientStorageError as exc:
                if attempt >= self._attempts:
                    raise
                cap = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
                delay = self._rng.uniform(0.0, cap)
                if self._on_retry is not None:
                    self._on_retry(RetryEvent(op, name, attempt, delay, exc))
                self._sleep(delay)
                attempt += 1

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        maybe_landed = False

        def call() -> None:
            nonlocal maybe_landed
            try:
                self.inner.put(name, data, exclusive=exclusive)
            except TransientStorageError:
                maybe_landed = True
                raise
            except ObjectExists:
                if not (maybe_landed and self._holds(name, data)):
                    raise

        self._retry("put", name, call)

    def _holds(self, name: str, data: bytes | memoryview) -> bool:
        try:
            stored = self._retry("get", name, lambda: self.inner.get(name))
        except ObjectNotFound:
            return False
        return stored == bytes(data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._retry("get", name, lambda: self.inner.get(name, offset, length))

    def get_into(self, name: str, offset: int, out: memoryview) -> None:
        self._retry("get", name, lambda: read_into(self.inner, name, offset, out))

    def stat(self, name: str) -> ObjectInfo:
        return self._retry("stat", name, lambda: self.inner.stat(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._retry("list", prefix, lambda: builtins.list(self.inner.list(prefix))))

    def delete(self, name: str) -> None:
        maybe_landed = False

        def call() -> None:
            nonlocal maybe_landed
            try:
                self.inner.delete(name)
            except TransientStorageError:
                maybe_landed = True
                raise
            except ObjectNotFound:
                if not maybe_landed:
                    raise

        self._retry("delete", name, call)

    # Optional capabilities whose calls deserve retries too (storage.capabilities).

    def keeps_retention(self) -> bool:
        return retention_keeper(self.inner) is not None

    def extend_retention(self, name: str) -> bool:
        keeper = retention_keeper(self.inner)
        if keeper is None:
            return False
        return self._retry("extend_retention", name, lambda: keeper.extend_retention(name))

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


class LimitedStorage:
    """At most ``max_concurrent`` calls in flight to ``inner`` at any moment.

    ``list`` is materialised while holding the slot and returned as an iterator over that
    list, so a caller that issues other calls while it iterates cannot deadlock the limit.
    """

    def __init__(self, inner: Storage, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.inner = inner
        self.max_concurrent = max_concurrent
        self._slots = threading.BoundedSemaphore(max_concurrent)

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        with self._slots:
            self.inner.put(name, data, exclusive=exclusive)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._slots:
            return self.inner.get(name, offset, length)

    def get_into(self, name: str, offset: int, out: memoryview) -> None:
        with self._slots:
            read_into(self.inner, name, offset, out)

    def stat(self, name: str) -> ObjectInfo:
        with self._slots:
            return self.inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._slots:
            found = builtins.list(self.inner.list(prefix))
        return iter(found)

    def delete(self, name: str) -> None:
        with self._slots:
            self.inner.delete(name)

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


# --- fault injection ------------------------------------------------------------------------


def _matches(match: Match, name: str) -> bool:
    if match is None:
        return True
    if isinstance(match, str):
        return name.startswith(match)
    return match(name)


@dataclass(slots=True)
class _Fault:
    ops: frozenset[str]
    exc: BaseException
    nth: int | None = None  # fail only the nth call of the op; None: every matching call
    match: Match = None
    after: bool = False  # raise after the inner call ran: its effect stays, its reply is lost


class FaultyStorage:
    """Injects failures into an inner storage, by rules that combine.

    Every call first counts itself in ``calls[op]`` (failed calls included), then sleeps for
    any :meth:`delay`, then raises the first matching fault. Rules return ``self`` so they
    chain: ``FaultyStorage(m).fail_call("put", 3, exc).delay("get", 0.01)``.
    """

    def __init__(
        self, inner: Storage, *, seed: int = 0, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._faults: builtins.list[_Fault] = []
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._delays: dict[str, float] = {}
        self._transient: tuple[float, frozenset[str], bool] | None = None
        self._truncate: builtins.list[tuple[Match, int]] = []
        self._corrupt: builtins.list[Match] = []
        self._capacity: int | None = None
        self._written = 0

    # --- rules ----------------------------------------------------------------------------

    def fail_call(
        self, op: Op, n: int, exc: BaseException, *, after: bool = False
    ) -> FaultyStorage:
        """The ``n``-th call (from 1) of ``op`` raises ``exc``.

        With ``after=True`` the call reaches the inner storage first and only its reply is
        lost, as when a connection drops after the server acted.
        """
        with self._lock:
            self._faults.append(_Fault(frozenset([op]), exc, nth=n, after=after))
        return self

    def fail_always(self, op: Op, exc: BaseException, match: Match = None) -> FaultyStorage:
        """Every call of ``op`` on a matching name (for ``list``: the prefix) raises ``exc``."""
        with self._lock:
            self._faults.append(_Fault(frozenset([op]), exc, match=match))
        return self

    def transient_rate(
        self, rate: float, ops: tuple[Op, ...] = ALL_OPS, *, lost_replies: bool = False
    ) -> FaultyStorage:
        """Calls of ``ops`` raise :class:`TransientStorageError` with probability ``rate``.

        The draws come from the seeded generator, so a single-threaded run is repeatable.
        With ``lost_replies=True`` half of these faults strike after the inner call ran.
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        with self._lock:
            self._transient = (rate, frozenset(ops), lost_replies)
        return self

    def truncate_get(self, match: Match, keep_bytes: int) -> FaultyStorage:
        """``get`` of a matching name returns at most its first ``keep_bytes`` bytes."""
        with self._lock:
            self._truncate.append((match, keep_bytes))
        return self

    def corrupt_get(self, match: Match) -> FaultyStorage:
        """``get`` of a matching name returns the data with one bit of its middle byte flipped."""
        with self._lock:
            self._corrupt.append(match)
        return self

    def delay(self, op: Op, seconds: float) -> FaultyStorage:
        """Every call of ``op`` sleeps ``seconds`` before doing anything else."""
        with self._lock:
            self._delays[op] = seconds
        return self

    def full_after_bytes(self, n: int) -> FaultyStorage:
        """A ``put`` that would take the total written through this wrapper past ``n`` bytes
        raises :class:`StorageFull` and writes nothing."""
        with self._lock:
            self._capacity = n
        return self

    def clear(self) -> None:
        """Remove every rule (the call counts stay)."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            self._truncate.clear()
            self._corrupt.clear()
            self._transient = None
            self._capacity = None

    # --- machinery ------------------------------------------------------------------------

    def _run(self, op: Op, name: str, call: Callable[[], T], size: int = 0) -> T:
        reserved = 0
        with self._lock:
            self.calls[op] += 1
            delay = self._delays.get(op, 0.0)
            before, after = self._pick_faults(op, name, self.calls[op])
            if before is None and op == "put" and self._capacity is not None:
                if self._written + size > self._capacity:
                    before = StorageFull(
                        f"{self.describe()}: full (injected, capacity {self._capacity} bytes)",
                        hint="free space, then run the command again",
                    )
                else:
                    # Reserved before the call so concurrent puts cannot overshoot together.
                    reserved = size
                    self._written += size
        if delay:
            self._sleep(delay)
        if before is not None:
            raise before
        try:
            result = call()
        except BaseException:
            with self._lock:
                self._written -= reserved  # a failed put takes no space
            raise
        if after is not None:
            raise after
        return result

    def _pick_faults(
        self, op: Op, name: str, n: int
    ) -> tuple[BaseException | None, BaseException | None]:
        for fault in self._faults:
            if (
                op in fault.ops
                and (fault.nth is None or fault.nth == n)
                and _matches(fault.match, name)
            ):
                return (None, fault.exc) if fault.after else (fault.exc, None)
        if self._transient is not None:
            rate, ops, lost_replies = self._transient
            if op in ops and self._rng.random() < rate:
                exc = TransientStorageError(f"{self.describe()}: injected transient {op} failure")
                if lost_replies and self._rng.random() < 0.5:
                    return None, exc
                return exc, None
        return None, None

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        self._run(
            "put",
            name,
            lambda: self.inner.put(name, data, exclusive=exclusive),
            memoryview(data).nbytes,
        )

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self._run("get", name, lambda: self.inner.get(name, offset, length))
        with self._lock:
            truncate = [keep for match, keep in self._truncate if _matches(match, name)]
            corrupt = any(_matches(match, name) for match in self._corrupt)
        if truncate:
            data = data[: min(truncate)]
        if corrupt and data:
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0x01
            data = bytes(flipped)
        return data

    def stat(self, name: str) -> ObjectInfo:
        return self._run("stat", name, lambda: self.inner.stat(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._run("list", prefix, lambda: builtins.list(self.inner.list(prefix))))

    def delete(self, name: str) -> None:
        self._run("delete", name, lambda: self.inner.delete(name))

    def describe(self) -> str:
        return f"faulty({self.inner.describe()})"

    def close(self) -> None:
        self.inner.close()
