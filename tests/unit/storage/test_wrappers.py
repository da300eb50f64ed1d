"""RetryingStorage, LimitedStorage and FaultyStorage, each doing what it says."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.errors import (
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.model import ObjectInfo
from safehold.storage.base import Storage
from safehold.storage.capabilities import read_into
from safehold.storage.local import LocalStorage
from safehold.storage.memory import MemoryStorage
from safehold.storage.wrappers import (
    FaultyStorage,
    LimitedStorage,
    RetryEvent,
    RetryingStorage,
)


class Sleeps:
    """Records backoff sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def transient(n: int = 0) -> TransientStorageError:
    return TransientStorageError(f"timeout #{n}")


@pytest.fixture
def memory() -> MemoryStorage:
    return MemoryStorage()


# --- RetryingStorage ---------------------------------------------------------------------


def test_retries_transient_errors_until_success(memory: MemoryStorage) -> None:
    memory.put("a", b"data")
    faulty = (
        FaultyStorage(memory).fail_call("get", 1, transient(1)).fail_call("get", 2, transient(2))
    )
    sleeps = Sleeps()
    events: list[RetryEvent] = []
    retrying = RetryingStorage(faulty, sleep=sleeps, on_retry=events.append)
    assert retrying.get("a") == b"data"
    assert faulty.calls["get"] == 3
    assert len(sleeps.delays) == 2
    assert [(e.op, e.name, e.attempt) for e in events] == [("get", "a", 1), ("get", "a", 2)]
    assert [e.delay for e in events] == sleeps.delays


@pytest.mark.parametrize(
    "error",
    [
        StorageError("broken"),
        StoragePermissionDenied("denied"),
        StorageFull("full"),
        ObjectNotFound("missing"),
        IntegrityError("damaged"),
    ],
)
def test_permanent_errors_are_not_retried(memory: MemoryStorage, error: Exception) -> None:
    memory.put("a", b"data")
    faulty = FaultyStorage(memory).fail_call("get", 1, error)
    sleeps = Sleeps()
    with pytest.raises(type(error)) as caught:
        RetryingStorage(faulty, sleep=sleeps).get("a")
    assert caught.value is error
    assert faulty.calls["get"] == 1
    assert sleeps.delays == []


@pytest.mark.parametrize("attempts", [1, 3, 7])
def test_gives_up_after_attempts_with_the_last_error(memory: MemoryStorage, attempts: int) -> None:
    faulty = FaultyStorage(memory)
    for n in range(1, attempts + 2):
        faulty.fail_call("stat", n, transient(n))
    sleeps = Sleeps()
    with pytest.raises(TransientStorageError, match=f"timeout #{attempts}$"):
        RetryingStorage(faulty, attempts=attempts, sleep=sleeps).stat("a")
    assert faulty.calls["stat"] == attempts
    assert len(sleeps.delays) == attempts - 1


def test_backoff_is_exponential_jittered_and_bounded() -> None:
    faulty = FaultyStorage(MemoryStorage()).fail_always("get", transient())
    sleeps = Sleeps()
    retrying = RetryingStorage(
        faulty, attempts=30, base_delay=0.1, max_delay=2.0, sleep=sleeps, rng=random.Random(3)
    )
    with pytest.raises(TransientStorageError):
        retrying.get("x")
    assert len(sleeps.delays) == 29
    for k, delay in enumerate(sleeps.delays, start=1):
        assert 0.0 <= delay <= min(2.0, 0.1 * 2 ** (k - 1))
    assert max(sleeps.delays) <= 2.0
    # Full jitter: the delays are spread out, not all at the cap.
    assert len(set(sleeps.delays)) == len(sleeps.delays)
    assert max(sleeps.delays[10:]) > 1.0


def test_every_operation_is_retried(memory: MemoryStorage) -> None:
    faulty = FaultyStorage(memory)
    for op in ("put", "get", "stat", "list", "delete"):
        faulty.fail_call(op, 1, transient())  # type: ignore[arg-type]
    retrying = RetryingStorage(faulty, sleep=Sleeps())
    retrying.put("data/a", b"1")
    assert retrying.get("data/a") == b"1"
    assert retrying.stat("data/a") == ObjectInfo("data/a", 1)
    assert list(retrying.list("data/")) == [ObjectInfo("data/a", 1)]
    retrying.delete("data/a")
    assert dict(faulty.calls) == {"put": 2, "get": 2, "stat": 2, "list": 2, "delete": 2}
    assert list(memory.list()) == []


def test_exclusive_put_whose_reply_was_lost_succeeds(memory: MemoryStorage) -> None:
    faulty = FaultyStorage(memory).fail_call("put", 1, transient(), after=True)
    RetryingStorage(faulty, sleep=Sleeps()).put("lock", b"me", exclusive=True)
    assert faulty.calls["put"] == 2  # the retry met ObjectExists and read the object back
    assert faulty.calls["get"] == 1
    assert memory.get("lock") == b"me"


def test_exclusive_put_after_transient_failure_loses_to_other_content(
    memory: MemoryStorage,
) -> None:
    memory.put("lock", b"someone else")
    faulty = FaultyStorage(memory).fail_call("put", 1, transient())
    with pytest.raises(ObjectExists):
        RetryingStorage(faulty, sleep=Sleeps()).put("lock", b"me", exclusive=True)
    assert memory.get("lock") == b"someone else"


def test_exclusive_put_without_transient_failure_never_reads_back(memory: MemoryStorage) -> None:
    memory.put("lock", b"me")
    faulty = FaultyStorage(memory)
    with pytest.raises(ObjectExists):
        RetryingStorage(faulty, sleep=Sleeps()).put("lock", b"me", exclusive=True)
    assert faulty.calls["get"] == 0


def test_delete_whose_reply_was_lost_succeeds(memory: MemoryStorage) -> None:
    memory.put("x", b"1")
    faulty = FaultyStorage(memory).fail_call("delete", 1, transient(), after=True)
    RetryingStorage(faulty, sleep=Sleeps()).delete("x")
    assert faulty.calls["delete"] == 2
    with pytest.raises(ObjectNotFound):
        memory.stat("x")
    with pytest.raises(ObjectNotFound):  # without an earlier transient failure it still raises
        RetryingStorage(faulty, sleep=Sleeps()).delete("x")


# --- LimitedStorage ------------------------------------------------------------------------


class InFlight:
    """A Storage that measures how many calls are inside it at once."""

    def __init__(self, inner: Storage, hold: float) -> None:
        self.inner = inner
        self.hold = hold
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def _enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(self.hold)  # keep the slot long enough for others to pile up

    def _leave(self) -> None:
        with self._lock:
            self.now -= 1

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        self._enter()
        try:
            self.inner.put(name, data, exclusive=exclusive)
        finally:
            self._leave()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._enter()
        try:
            return self.inner.get(name, offset, length)
        finally:
            self._leave()

    def stat(self, name: str) -> ObjectInfo:
        self._enter()
        try:
            return self.inner.stat(name)
        finally:
            self._leave()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._enter()
        try:
            return iter(list(self.inner.list(prefix)))
        finally:
            self._leave()

    def delete(self, name: str) -> None:
        self._enter()
        try:
            self.inner.delete(name)
        finally:
            self._leave()

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        pass


@pytest.mark.parametrize("limit", [1, 3])
def test_limit_is_never_exceeded(limit: int) -> None:
    probe = InFlight(MemoryStorage(), hold=0.002)
    limited = LimitedStorage(probe, limit)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(15):
                limited.put(f"t{i}/{j}", b"x")
                limited.get(f"t{i}/{j}")
                limited.stat(f"t{i}/{j}")
                list(limited.list(f"t{i}/"))
            limited.delete(f"t{i}/0")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert probe.peak == limit  # reached (so the probe works) and never exceeded
    assert probe.now == 0


def test_unlimited_probe_sees_more_than_the_limit() -> None:
    # The control for the test above: without the wrapper the threads do overlap.
    probe = InFlight(MemoryStorage(), hold=0.05)
    threads = [threading.Thread(target=probe.put, args=(f"o{i}", b"x")) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert probe.peak > 3


def test_listing_does_not_hold_the_slot_while_iterating() -> None:
    memory = MemoryStorage()
    for i in range(5):
        memory.put(f"d/{i}", bytes([i]))
    limited = LimitedStorage(memory, 1)
    got: list[bytes] = []

    def walk() -> None:
        for info in limited.list("d/"):
            got.append(limited.get(info.name))  # would deadlock if list kept the only slot

    thread = threading.Thread(target=walk, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "list held the only slot while the caller iterated"
    assert sorted(got) == [bytes([i]) for i in range(5)]


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LimitedStorage(MemoryStorage(), 0)


# --- FaultyStorage -------------------------------------------------------------------------


def test_fail_call_strikes_only_the_nth_call(memory: MemoryStorage) -> None:
    error = StorageError("third put")
    faulty = FaultyStorage(memory).fail_call("put", 3, error)
    faulty.put("a", b"1")
    faulty.put("b", b"2")
    with pytest.raises(StorageError) as caught:
        faulty.put("c", b"3")
    assert caught.value is error
    faulty.put("d", b"4")
    assert sorted(i.name for i in memory.list()) == ["a", "b", "d"]
    assert faulty.calls["put"] == 4
    assert faulty.calls["get"] == 0


def test_fail_call_after_runs_the_call_then_raises(memory: MemoryStorage) -> None:
    faulty = FaultyStorage(memory).fail_call("put", 1, transient(), after=True)
    with pytest.raises(TransientStorageError):
        faulty.put("a", b"landed")
    assert memory.get("a") == b"landed"


def test_fail_always_by_prefix_and_predicate(memory: MemoryStorage) -> None:
    faulty = (
        FaultyStorage(memory)
        .fail_always("put", StoragePermissionDenied("no"), match="locks/")
        .fail_always("get", StorageError("bad"), match=lambda n: n.endswith(".idx"))
    )
    for _ in range(3):
        with pytest.raises(StoragePermissionDenied):
            faulty.put("locks/1", b"x")
    faulty.put("data/1", b"x")
    faulty.put("data/2.idx", b"y")
    assert faulty.get("data/1") == b"x"
    with pytest.raises(StorageError):
        faulty.get("data/2.idx")
    assert faulty.calls["put"] == 5


def test_fail_always_without_match_hits_every_name(memory: MemoryStorage) -> None:
    faulty = FaultyStorage(memory).fail_always("list", transient())
    with pytest.raises(TransientStorageError):
        list(faulty.list())
    with pytest.raises(TransientStorageError):
        list(faulty.list("data/"))


def outcomes(seed: int, rate: float, calls: int = 400) -> list[bool]:
    memory = MemoryStorage()
    memory.put("a", b"1")
    faulty = FaultyStorage(memory, seed=seed).transient_rate(rate, ops=("get",))
    result = []
    for _ in range(calls):
        try:
            faulty.get("a")
            result.append(True)
        except TransientStorageError:
            result.append(False)
    faulty.stat("a")  # not in ops: never fails
    return result


def test_transient_rate_is_seeded_and_roughly_right() -> None:
    first = outcomes(seed=5, rate=0.25)
    assert first == outcomes(seed=5, rate=0.25)
    assert first != outcomes(seed=6, rate=0.25)
    assert 60 <= first.count(False) <= 140
    assert all(outcomes(seed=1, rate=0.0))
    assert not any(outcomes(seed=1, rate=1.0))


def test_transient_rate_with_lost_replies_sometimes_lands(memory: MemoryStorage) -> None:
    faulty = FaultyStorage(memory, seed=2).transient_rate(1.0, ops=("put",), lost_replies=True)
    for i in range(40):
        with pytest.raises(TransientStorageError):
            faulty.put(f"o{i}", b"x")
    landed = len(list(memory.list()))
    assert 5 < landed < 35  # about half struck after the write


def test_truncate_get(memory: MemoryStorage) -> None:
    memory.put("data/a", b"0123456789")
    memory.put("index/a", b"0123456789")
    faulty = FaultyStorage(memory).truncate_get("data/", 4)
    assert faulty.get("data/a") == b"0123"
    assert faulty.get("data/a", 2, 6) == b"2345"
    assert faulty.get("index/a") == b"0123456789"


def test_corrupt_get_flips_one_byte(memory: MemoryStorage) -> None:
    original = bytes(range(100))
    memory.put("p", original)
    faulty = FaultyStorage(memory).corrupt_get(lambda n: n == "p")
    damaged = faulty.get("p")
    assert len(damaged) == len(original)
    assert sum(a != b for a, b in zip(damaged, original, strict=True)) == 1
    assert memory.get("p") == original  # the stored object is untouched
    memory.put("empty-ok", b"")
    assert FaultyStorage(memory).corrupt_get(None).get("empty-ok") == b""


def test_delay(memory: MemoryStorage) -> None:
    sleeps = Sleeps()
    faulty = FaultyStorage(memory, sleep=sleeps).delay("get", 0.5)
    faulty.put("a", b"1")
    faulty.get("a")
    faulty.get("a")
    assert sleeps.delays == [0.5, 0.5]


def test_delay_really_sleeps_by_default(memory: MemoryStorage) -> None:
    faulty = FaultyStorage(memory).delay("stat", 0.05)
    memory.put("a", b"1")
    started = time.monotonic()
    faulty.stat("a")
    assert time.monotonic() - started >= 0.05


def test_full_after_bytes(memory: MemoryStorage) -> None:
    faulty = FaultyStorage(memory).full_after_bytes(100)
    faulty.put("a", b"x" * 60)
    faulty.put("b", memoryview(b"y" * 40))  # exactly 100 in total: still fits
    with pytest.raises(StorageFull):
        faulty.put("c", b"z")
    with pytest.raises(ObjectNotFound):
        memory.stat("c")
    assert faulty.calls["put"] == 3


def test_full_after_bytes_does_not_count_failed_puts(memory: MemoryStorage) -> None:
    memory.put("taken", b"")
    faulty = FaultyStorage(memory).full_after_bytes(10)
    with pytest.raises(ObjectExists):
        faulty.put("taken", b"x" * 10, exclusive=True)
    faulty.put("fits", b"x" * 10)


def test_rules_combine_and_clear(memory: MemoryStorage) -> None:
    sleeps = Sleeps()
    faulty = (
        FaultyStorage(memory, sleep=sleeps)
        .delay("put", 0.1)
        .fail_call("put", 2, StorageError("second"))
        .full_after_bytes(3)
    )
    faulty.put("a", b"12")
    with pytest.raises(StorageError, match="second"):
        faulty.put("b", b"1")
    with pytest.raises(StorageFull):
        faulty.put("c", b"12")
    assert sleeps.delays == [0.1, 0.1, 0.1]
    faulty.clear()
    faulty.put("d", b"123456")
    assert faulty.calls["put"] == 4
    assert memory.get("d") == b"123456"


# --- reading into a caller's buffer through the wrappers -----------------------------------


def test_read_into_through_the_wrappers_retries_and_limits(tmp_path: Path) -> None:
    traced = _Traced(str(tmp_path), fail_first=True)
    traced.put("p", b"0123456789")
    stack = RetryingStorage(LimitedStorage(traced, 1), sleep=Sleeps())
    buf = bytearray(4)
    read_into(stack, "p", 3, memoryview(buf))
    assert buf == b"3456"
    # Retried once, and always through get_into: falling back to get would allocate a new
    # buffer per read.
    assert traced.calls == ["get_into", "get_into"]


def test_read_into_falls_back_to_get_and_refuses_a_short_answer(memory: MemoryStorage) -> None:
    memory.put("p", b"0123456789")
    buf = bytearray(3)
    read_into(memory, "p", 7, memoryview(buf))
    assert buf == b"789"
    short = FaultyStorage(memory).truncate_get("p", 2)
    with pytest.raises(IntegrityError, match="too short"):
        read_into(short, "p", 0, memoryview(bytearray(5)))


class _Traced(LocalStorage):
    """A LocalStorage that records its get_into calls and can fail the first one."""

    def __init__(self, root: str, *, fail_first: bool) -> None:
        super().__init__(root)
        self.fail_first = fail_first
        self.calls: list[str] = []

    def get_into(self, name: str, offset: int, out: memoryview) -> None:
        self.calls.append("get_into")
        if self.fail_first and len(self.calls) == 1:
            raise transient()
        super().get_into(name, offset, out)
