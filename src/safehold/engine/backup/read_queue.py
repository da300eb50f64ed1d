"""Reading changed files while the walk is still finding them.

The walk runs in one thread and is bound by Python; reading spends its time in hashing,
compression and encryption, outside the GIL. Overlapping them makes a backup cost about
the longer of the two instead of their sum (a re-backup after a small change was half walk,
half reading). Readers take the largest file known at that moment, so that a big file found
early does not run alone at the end: what sorting the whole list first gave, without
waiting for the walk to finish.

Files of one chunk (``small``) skip the heap: they wait in a first-in first-out queue,
read after any larger file known, in the order the walk found them. Ordering them by size
gains nothing (each is one short read), while the heap cost a comparison of tuples per
level and read the files of a folder scattered over the whole tree, far from when the
walk stat-ed them: a first backup of 200,000 mail-sized files took 15.4 CPU s with the
heap and 12.3 with the FIFO (docs/benchmarks.md, "Many small files").

Files of at most ``tiny`` bytes are read by the first reader only, from a queue of their
own that holds at most ``tiny_ahead`` of them; when it is full the walk waits until half
have been read. Such a file costs a few system calls and some Python, and each call
hands the interpreter lock to whichever thread wants it: with two readers, a first
backup of 200,000 mail-sized files switched threads 5 to 6 times as often and took 17-19
s (26-27 CPU s); read by one, 12-15 s (15-20 CPU s). Larger files still go to any
reader, whose hashing and compression run outside the lock side by side. The bound keeps
the walk from running ahead of the one reader with every folder it leaves waiting in
memory (one reader and no bound peaked at 220-238 MB, two readers at 165-176, one with
the bound at 156-170); waiting for half, not for one, lets walk and reader take turns in
long stretches (with a bound of 256 and the walk let go at every file read, nothing was
won).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

from safehold.engine.progress import Progress

J = TypeVar("J")


class ReadQueue(Generic[J]):
    """``threads`` readers calling ``read(job)``, largest ``size`` first, except that jobs
    of at most ``small`` bytes come after all larger ones, in the order they were put, and
    jobs of at most ``tiny`` bytes are read by the first reader alone, in that order (or,
    with ``read_tiny``, handed to it up to ``tiny_batch`` at a time).

    Use as a context manager: leaving it normally waits for every job and re-raises the
    first reader error; leaving it with an exception drops the jobs not yet started.
    """

    def __init__(
        self,
        read: Callable[[J], None],
        threads: int,
        *,
        name: str = "read",
        small: int = -1,
        tiny: int = -1,
        tiny_ahead: int = 4096,
        read_tiny: Callable[[list[J]], None] | None = None,
        tiny_batch: int = 512,
    ) -> None:
        self._read = read
        # Takes the tiny jobs queued, up to tiny_batch at once (a forked reader's
        # requests: engine/backup/tiny_procs.py); None: the first reader reads each.
        self._read_tiny = read_tiny
        self._tiny_batch = tiny_batch
        self._small = small
        self._tiny = tiny if threads > 1 else -1  # (one reader: it reads everything anyway)
        self._tiny_ahead = tiny_ahead
        self._heap: list[tuple[int, int, J]] = []
        self._fifo: deque[J] = deque()
        self._tinies: deque[J] = deque()
        self._seq = itertools.count()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # other readers wait here for larger jobs
        self._first = threading.Condition(lock)  # the first reader waits here for any job
        self._room = threading.Condition(lock)  # the walk waits here for room for a tiny job
        self._closed = False
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, args=(i == 0,), name=f"{name}-{i}", daemon=True)
            for i in range(max(1, threads))
        ]

    def __enter__(self) -> ReadQueue[J]:
        for t in self._threads:
            t.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._cond:
            self._closed = True
            if exc is not None:
                self._drop()
            self._wake_all()
        for t in self._threads:
            t.join()
        if exc is None and self._error is not None:
            raise self._error

    def _drop(self) -> None:
        self._heap.clear()
        self._fifo.clear()
        self._tinies.clear()

    def _wake_all(self) -> None:
        self._cond.notify_all()
        self._first.notify_all()
        self._room.notify_all()

    def put(self, job: J, size: int) -> None:
        """Queue a job; raises a reader's error at once, so that the walk stops early. A
        tiny job waits while ``tiny_ahead`` of them are queued."""
        with self._cond:
            if self._error is not None:
                raise self._error
            if size <= self._tiny:
                while len(self._tinies) >= self._tiny_ahead and self._error is None:
                    self._room.wait()
                if self._error is not None:
                    raise self._error
                self._tinies.append(job)
                self._first.notify()
                return
            if size <= self._small:
                self._fifo.append(job)
            else:
                heapq.heappush(self._heap, (-size, next(self._seq), job))
            self._cond.notify()
            self._first.notify()  # (it takes larger jobs too when it has no tiny one)

    def _next(self, first: bool) -> tuple[J | None, list[J] | None]:
        """The next job for a reader, or (the first reader, with ``read_tiny``) a batch of
        tiny jobs; both None: closed and empty, or failed. Holds the lock."""
        wait = self._first if first else self._cond
        while True:
            if self._error is not None:
                return None, None
            if first and self._tinies:
                tinies = self._tinies
                before = len(tinies)
                job: J | None = None
                batch: list[J] | None = None
                if self._read_tiny is not None:
                    batch = [tinies.popleft() for _ in range(min(before, self._tiny_batch))]
                else:
                    job = tinies.popleft()
                # The walk goes on once half have been read, not at each one: a hand-over
                # of the lock to it and back per file is what one reader is to save.
                if len(tinies) <= self._tiny_ahead // 2 < before:
                    self._room.notify()
                return job, batch
            if self._heap:
                return heapq.heappop(self._heap)[2], None
            if self._fifo:
                return self._fifo.popleft(), None
            if self._closed:  # (the first reader's tiny jobs were taken above)
                return None, None
            wait.wait()

    def _run(self, first: bool) -> None:
        while True:
            with self._cond:
                job, batch = self._next(first)
            if job is None and batch is None:
                return
            try:
                if batch is not None and self._read_tiny is not None:
                    self._read_tiny(batch)
                elif job is not None:
                    self._read(job)
            except BaseException as exc:
                with self._cond:
                    if self._error is None:
                        self._error = exc
                    self._drop()
                    self._wake_all()
                return


class HeldProgress(Progress):
    """Holds readers' progress while the walk is still counting the totals; ``release``
    hands what was held to the real sink and forwards everything after it."""

    def __init__(self, target: Progress) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._released = False
        self._items = 0
        self._bytes = 0

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        """Add to the counts held until :meth:`release`; after it, forward them at once."""
        if not self._released:
            with self._lock:
                if not self._released:
                    self._items += items
                    self._bytes += nbytes
                    return
        self._target.advance(items, nbytes)

    def warn(self, path: str, message: str) -> None:
        """Forward a warning at once: only counts are held."""
        self._target.warn(path, message)

    def release(self) -> None:
        """Hand what was held to the real sink; from now on everything goes straight through."""
        with self._lock:
            self._released = True
            items, nbytes = self._items, self._bytes
        if items or nbytes:
            self._target.advance(items, nbytes)
