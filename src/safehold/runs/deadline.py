"""A run's overall time-out (the source's ``timeout``), with or without SIGALRM.

Where the entry point allows it (``safehold.runtime.may_use_alarm``: the command line, in
its main thread), a SIGALRM interrupts whatever the run is doing when the time is up, even
a read blocked on a dump tool that writes nothing. A signal is process-wide and reaches
the main thread only, so elsewhere (a service's worker thread, a program that configured
no runtime) the deadline caps every hook's own time-out, is checked between phases, and
is checked before and after every read of a stream source: a read that blocks ends at the
source's own bounds (its tool exits, or ``sources.process.DRAIN_IDLE`` passes), and the
run then times out without a snapshot. Correct either way; without the alarm, later.
"""

from __future__ import annotations

import dataclasses
import io
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, BinaryIO, cast

from safehold import runtime
from safehold.sources.base import Stream

__all__ = ["Deadline", "RunTimeout"]


class RunTimeout(BaseException):
    """The run's time is up; a BaseException so no ``except Exception`` on the way
    swallows it."""


class Deadline:
    """The time left to one run (``seconds`` None: no limit); see the module docstring for the
    alarm and how it is checked without one."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds if seconds else None
        self._armed = False
        self._previous: Any = None

    def remaining(self) -> float | None:
        """Seconds left (never below 0), or None without a limit."""
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    def check(self) -> None:
        """Raise :class:`RunTimeout` if the time is up."""
        if self._end is not None and time.monotonic() >= self._end:
            raise RunTimeout()

    def arm(self) -> None:
        """A SIGALRM at the deadline, where the runtime allows one."""
        if self._end is None or not runtime.may_use_alarm():
            return

        def fire(signum: int, frame: FrameType | None) -> None:
            raise RunTimeout()

        self._previous = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, max(0.001, self._end - time.monotonic()))
        self._armed = True

    def disarm(self) -> None:
        """Cancel the alarm and put back the SIGALRM handler found by :meth:`arm`."""
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
            self._armed = False

    def bound(self, stream: Stream) -> Stream:
        """``stream``, its reads checked against the deadline unless an alarm guards it."""
        if self._end is None or self._armed:
            return stream

        @contextmanager
        def opener() -> Iterator[BinaryIO]:
            with stream.open() as reader:
                yield cast(BinaryIO, _CheckedReader(reader, self))

        return dataclasses.replace(stream, open=opener)


class _CheckedReader(io.RawIOBase):
    """A stream whose every read checks the deadline before and after reading."""

    def __init__(self, inner: BinaryIO, deadline: Deadline) -> None:
        super().__init__()
        self._inner = inner
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        self._deadline.check()
        inner: Any = self._inner  # BinaryIO does not spell out readinto
        # A buffered file's readinto waits until the whole buffer is filled (megabytes,
        # for the chunker): a tool writing a line now and then would hold it far past the
        # deadline. readinto1 returns what one read below brought.
        buffered = isinstance(inner, io.BufferedIOBase)
        n: int = inner.readinto1(buf) if buffered else inner.readinto(buf)
        # After as well: a read that blocked past the deadline (even one that found the
        # end) must not let the stream complete a snapshot.
        self._deadline.check()
        return n
