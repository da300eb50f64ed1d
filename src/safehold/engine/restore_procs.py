"""Restore workers in processes: the packs of a large restore, shared out among forked
children, each with its own interpreter lock.

Threads alone were bound by the interpreter lock: per small file, restore runs a few dozen
lines of Python between system calls, and with three threads two of them were waiting for
the lock most of the time (2.7 s of futex waits and 47,000 context switches in a 4 s
restore of the benchmark data). Two processes of two threads each restored the same data
in 2.9 s instead of 3.8 s, with less CPU time.

How the work is shared (POSIX ``fork``, after planning, so every child has the plan):

* tickets: the parent writes every pack's number, 4 bytes each, into a pipe; a child's
  thread reads one (reads of 4 bytes from writes of whole records are atomic), restores
  that pack, and reads the next, until the parent closes the pipe. Larger packs come
  first, so the last ones to finish are short.
* reports: each child writes fixed-size progress records, and at most one error record,
  into a second pipe; the parent forwards progress to its sink, and on an error stops
  handing out tickets, ends the other children and raises the same error.
* files of several blobs, whose blobs may be in packs of different children, are created
  by the parent before the fork and finished (owner, mode, times) by it after the
  children: a child opens one only to write its blobs at their offsets. Everything else
  a child creates and finishes itself.

A child never returns into the caller's code: it leaves with ``os._exit``, so that no
``finally`` or ``with`` block of the parent (the repository lock!) runs twice. It uses
nothing the fork may have left locked by another thread: it reports through its own pipe,
never the parent's progress sink, and touches no lock but its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from safehold import errors
from safehold.engine.progress import Progress
from safehold.errors import SafeholdError

__all__ = ["CHILD_THREADS", "run_forked", "usable"]

# Threads per child: one runs while the other waits for a direct write to reach the disk
# (one thread per child: 3.6-3.8 s on the benchmark data, two: 2.9 s).
CHILD_THREADS = 2
# Forking costs a few milliseconds; below this many packs per child the threads do.
MIN_PACKS_PER_CHILD = 2

_TICKET = struct.Struct("<I")
_RECORD = struct.Struct("<Bqq")  # kind, then two numbers (progress) or a length (error)
_PROGRESS, _ERROR = 1, 2
_CHUNK = 4096  # ticket writes of at most PIPE_BUF bytes are atomic: whole records only

Work = Callable[[bytes, Any], None]


def usable(processes: int, packs: int) -> bool:
    return processes > 1 and hasattr(os, "fork") and packs >= MIN_PACKS_PER_CHILD * processes


class _PipeProgress(Progress):
    """A child's progress sink: records into the report pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        os.write(self.fd, _RECORD.pack(_PROGRESS, items, nbytes))


def run_forked(
    work: Work,
    packs: Sequence[tuple[bytes, Any]],
    processes: int,
    progress: Progress,
    child_setup: Callable[[Progress], None],
) -> None:
    """Run ``work(pack_id, blobs)`` for every pack in ``processes`` forked children;
    ``child_setup(progress)`` prepares the copy of the caller's state in each child. Raises
    the first error a child reports (its type, message and hint), or a SafeholdError if a
    child died without one."""
    reports_r, reports_w = os.pipe()
    tickets_r, tickets_w = os.pipe()
    pids: list[int] = []
    try:
        for _ in range(processes):
            try:
                pid = os.fork()
            except OSError:
                if pids:
                    break  # fewer children than asked: they share the tickets
                raise
            if pid == 0:
                os.close(reports_r)
                os.close(tickets_w)
                _child(work, packs, tickets_r, reports_w, child_setup)  # never returns
            pids.append(pid)
    except BaseException:
        for fd in (reports_r, reports_w, tickets_r, tickets_w):
            os.close(fd)
        _end(pids, signal.SIGKILL)
        raise
    os.close(reports_w)
    os.close(tickets_r)
    try:
        failure = _relay(reports_r, tickets_w, len(packs), progress, pids)
    except BaseException:
        _end(pids, signal.SIGKILL)
        raise
    finally:
        os.close(reports_r)
    statuses = _end(pids, None)
    if failure is not None:
        raise failure
    for status in statuses:
        if status:
            raise SafeholdError(
                f"a restore worker process ended unexpectedly ({_describe(status)})",
                hint="run the restore again; the repository is unchanged",
            )


def _relay(
    reports: int, tickets: int, count: int, progress: Progress, pids: list[int]
) -> BaseException | None:
    """Hand out tickets and forward reports until every child has closed its end."""
    pending = memoryview(b"".join(_TICKET.pack(k) for k in range(count)))
    os.set_blocking(tickets, False)
    failure: BaseException | None = None
    buf = bytearray()
    try:
        while True:
            writing = [tickets] if tickets >= 0 else []
            readable, writable, _ = select.select([reports], writing, [])
            if writable:
                with contextlib.suppress(BlockingIOError):
                    pending = pending[os.write(tickets, pending[:_CHUNK]) :]
                if not pending:
                    os.close(tickets)
                    tickets = -1
            if not readable:
                continue
            chunk = os.read(reports, 65536)
            if not chunk:
                return failure
            buf += chunk
            while len(buf) >= _RECORD.size:
                kind, a, b = _RECORD.unpack_from(buf)
                if kind == _PROGRESS:
                    del buf[: _RECORD.size]
                    progress.advance(a, b)
                    continue
                if len(buf) < _RECORD.size + a:
                    break  # the rest of the error record is still coming
                raw = bytes(buf[_RECORD.size : _RECORD.size + a])
                del buf[: _RECORD.size + a]
                if failure is None:
                    failure = _rebuild(raw)
                    if tickets >= 0:  # no more work for anyone
                        os.close(tickets)
                        tickets = -1
                    _signal(pids, signal.SIGTERM)
    finally:
        if tickets >= 0:
            os.close(tickets)


def _child(
    work: Work,
    packs: Sequence[tuple[bytes, Any]],
    tickets: int,
    reports: int,
    child_setup: Callable[[Progress], None],
) -> None:
    code = 0
    try:
        # A SIGTERM handler of the parent's (a service's) is not for a child: it just ends.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        child_setup(_PipeProgress(reports))
        stop = threading.Event()

        def take() -> None:
            try:
                while not stop.is_set():
                    raw = os.read(tickets, _TICKET.size)
                    if len(raw) < _TICKET.size:
                        return  # the parent closed the pipe: no more packs
                    work(*packs[_TICKET.unpack(raw)[0]])
            except BaseException:
                stop.set()
                raise

        with ThreadPoolExecutor(CHILD_THREADS, thread_name_prefix="restore") as pool:
            futures = [pool.submit(take) for _ in range(CHILD_THREADS)]
            for fut in futures:
                fut.result()
    except BaseException as exc:
        code = 1
        with contextlib.suppress(BaseException):
            raw = _describe_error(exc)
            os.write(reports, _RECORD.pack(_ERROR, len(raw), 0) + raw)
    finally:
        os._exit(code)


def _describe_error(exc: BaseException) -> bytes:
    if isinstance(exc, SafeholdError):
        doc = {"type": type(exc).__name__, "message": exc.message[:2000], "hint": exc.hint}
    elif isinstance(exc, KeyboardInterrupt):
        doc = {"type": "KeyboardInterrupt"}
    else:
        doc = {"type": "", "message": f"{type(exc).__name__}: {exc}"[:2000]}
    return json.dumps(doc).encode()


def _rebuild(raw: bytes) -> BaseException:
    try:
        doc = json.loads(raw)
    except ValueError:
        return SafeholdError("a restore worker process failed and its report was unreadable")
    name = str(doc.get("type", ""))
    if name == "KeyboardInterrupt":
        return KeyboardInterrupt()
    message = str(doc.get("message", ""))
    cls = getattr(errors, name, None) if name else None
    if isinstance(cls, type) and issubclass(cls, SafeholdError):
        with contextlib.suppress(TypeError):
            return cls(message, hint=doc.get("hint"))
    return SafeholdError(f"a restore worker process failed: {message}")


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _end(pids: list[int], sig: int | None) -> list[int]:
    """Wait for every child (after sending ``sig``); their wait statuses."""
    if sig is not None:
        _signal(pids, sig)
    statuses = []
    for pid in pids:
        while True:
            try:
                statuses.append(os.waitpid(pid, 0)[1])
                break
            except ChildProcessError:
                statuses.append(0)
                break
            except InterruptedError:
                continue
    return statuses


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
