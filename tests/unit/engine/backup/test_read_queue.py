"""The queue that reads files while the walk goes on."""

from __future__ import annotations

import threading

import pytest

from safehold.engine.backup.read_queue import HeldProgress, ReadQueue
from safehold.engine.progress import Progress


def test_every_job_runs_once_and_the_largest_known_goes_first() -> None:
    gate = threading.Event()
    done: list[int] = []
    lock = threading.Lock()

    def read(job: int) -> None:
        if job == -1:
            gate.wait(5)  # hold the only reader until every other job is queued
            return
        with lock:
            done.append(job)

    with ReadQueue[int](read, 1) as queue:
        queue.put(-1, 10**9)
        for size in [5, 50, 1, 500, 20]:
            queue.put(size, size)
        gate.set()
    assert done == [500, 50, 20, 5, 1]


def test_small_jobs_come_after_larger_ones_in_the_order_they_were_put() -> None:
    gate = threading.Event()
    done: list[int] = []
    lock = threading.Lock()

    def read(job: int) -> None:
        if job == -1:
            gate.wait(5)  # hold the only reader until every other job is queued
            return
        with lock:
            done.append(job)

    with ReadQueue[int](read, 1, small=100) as queue:
        queue.put(-1, 10**9)
        for size in [5, 500, 50, 1, 100, 2000, 101, 20]:
            queue.put(size, size)
        gate.set()
    # Larger than ``small``: largest first; the rest first-in first-out.
    assert done == [2000, 500, 101, 5, 50, 1, 100, 20]


def test_a_reader_error_stops_the_walk_and_is_raised() -> None:
    ran: list[int] = []

    def read(job: int) -> None:
        ran.append(job)
        if job == 3:
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"), ReadQueue[int](read, 2) as queue:
        for i in range(1000):
            queue.put(i, 1000 - i)  # in order: 0 is the largest
    assert 3 in ran
    assert len(ran) < 1000  # the rest were dropped, the walk was told at its next put


def test_an_error_in_the_walk_drops_queued_jobs() -> None:
    gate = threading.Event()
    ran: list[int] = []

    def read(job: int) -> None:
        gate.wait(5)
        ran.append(job)

    # The reader is still busy with the first job when the walk fails (the gate opens
    # only while the queue is being closed).
    threading.Timer(0.3, gate.set).start()
    with pytest.raises(RuntimeError, match="walk failed"), ReadQueue[int](read, 1) as queue:
        for i in range(10):
            queue.put(i, 10 - i)
        raise RuntimeError("walk failed")
    assert ran in ([], [0])  # at most the job already started


def test_an_error_in_the_walk_drops_queued_small_jobs_too() -> None:
    gate = threading.Event()
    ran: list[int] = []

    def read(job: int) -> None:
        gate.wait(5)
        ran.append(job)

    threading.Timer(0.3, gate.set).start()
    with (
        pytest.raises(RuntimeError, match="walk failed"),
        ReadQueue[int](read, 1, small=100) as queue,
    ):
        for i in range(10):
            queue.put(i, 10 - i)  # all small: first-in first-out
        raise RuntimeError("walk failed")
    assert ran in ([], [0])


class _Sink(Progress):
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        self.calls.append((items, nbytes))


def test_held_progress_is_released_in_one_step_then_forwarded() -> None:
    sink = _Sink()
    held = HeldProgress(sink)
    held.advance(1, 10)
    held.advance(0, 5)
    assert sink.calls == []
    held.release()
    held.advance(2, 7)
    assert sink.calls == [(1, 15), (2, 7)]


def test_tiny_jobs_are_read_by_the_first_reader_and_larger_ones_by_any() -> None:
    """Tiny files cost more in interpreter-lock hand-overs than two readers gain on them
    (engine/backup/read_queue.py): one reader takes them all."""
    readers: dict[int, set[str]] = {}
    lock = threading.Lock()
    both = threading.Barrier(2, timeout=5)

    def read(job: int) -> None:
        if job >= 10**6:
            both.wait()  # the two large jobs are read at the same time: by both readers
        with lock:
            readers.setdefault(job, set()).add(threading.current_thread().name)

    with ReadQueue[int](read, 2, small=100, tiny=10) as queue:
        for i in range(200):
            queue.put(i, 1 + i % 10)  # tiny
        queue.put(10**6, 10**6)
        queue.put(10**6 + 1, 10**6)
    tiny_readers = set().union(*(readers[i] for i in range(200)))
    assert tiny_readers == {"read-0"}
    assert readers[10**6] | readers[10**6 + 1] == {"read-0", "read-1"}


def test_the_walk_waits_while_tiny_jobs_fill_their_queue_until_half_are_read() -> None:
    gate, started = threading.Event(), threading.Event()
    done: list[int] = []

    def read(job: int) -> None:
        if job == -1:
            started.set()
            gate.wait(5)  # the first reader is busy: tiny jobs pile up
        done.append(job)

    with ReadQueue[int](read, 2, tiny=10, tiny_ahead=4) as queue:
        queue.put(-1, 1)  # taken by the first reader, which then waits at the gate
        assert started.wait(5)
        for i in range(4):
            queue.put(i, 1)
        walk = threading.Thread(target=queue.put, args=(4, 1))
        walk.start()
        walk.join(0.3)
        assert walk.is_alive()  # the fifth waits for room
        gate.set()
        walk.join(5)
        assert not walk.is_alive()
    assert done == [-1, 0, 1, 2, 3, 4]


def test_a_reader_error_wakes_a_walk_waiting_for_room() -> None:
    def read(job: int) -> None:
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"), ReadQueue[int](read, 2, tiny=10) as queue:
        for i in range(10_000):
            queue.put(i, 1)


def test_one_reader_reads_tiny_jobs_like_any_other() -> None:
    done: list[int] = []
    with ReadQueue[int](done.append, 1, small=100, tiny=10, tiny_ahead=2) as queue:
        for i in range(50):
            queue.put(i, 1)
    assert done == list(range(50))


def test_tiny_jobs_go_to_read_tiny_in_batches_in_the_order_put() -> None:
    gate, started = threading.Event(), threading.Event()
    batches: list[list[int]] = []
    single: list[int] = []

    def read(job: int) -> None:
        if job == -1:
            started.set()
            gate.wait(5)  # the first reader is busy: tiny jobs pile up
        single.append(job)

    with ReadQueue[int](
        read, 2, tiny=10, tiny_ahead=100, read_tiny=batches.append, tiny_batch=4
    ) as queue:
        queue.put(-1, 50)  # a larger job: read by a reader, one at a time
        assert started.wait(5)
        for i in range(10):
            queue.put(i, 1)
        gate.set()
    assert single == [-1]
    assert [j for b in batches for j in b] == list(range(10))
    assert max(len(b) for b in batches) <= 4
