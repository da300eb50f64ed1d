"""Restore workers in processes: the packs of a large restore, shared out among this
process and forked children, each with its own interpreter lock.

Threads alone were bound by the interpreter lock: per small file, restore runs a few dozen
lines of Python between system calls, and with three threads two of them were waiting for
the lock most of the time (2.7 s of futex waits and 47,000 context switches in a 4 s
restore of the benchmark data). Two processes of two threads each restored the same data
in 2.9 s instead of 3.8 s, with less CPU time. The parent is one of the workers: every
child copies the pages of the parent's objects it touches (reference counts are writes),
about 18 MiB of the benchmark's plan each, so one child less is that much less memory.

Only where the entry point allows forking (``safehold.runtime.may_fork``: the command
line does, a threaded server must not); without it the restore's threads do all the work
in one process, correctly, if more slowly.

How the work is shared (POSIX ``fork``, after planning, so every child has the plan):

* tickets: the parent writes every pack's number, 4 bytes each, into a pipe; a worker
  thread (of the parent or of a child) reads one (reads of 4 bytes from writes of whole
  records are atomic), restores that pack, and reads the next, until the pipe is closed.
  Larger packs come first, so the last ones to finish are short.
* reports: each child writes fixed-size progress records, and at most one error record,
  into a second pipe; a thread of the parent forwards progress to its sink, and on an
  error stops handing out tickets, ends the other children and raises the same error. A
  child that finishes also sends its notes, if any (what it could not do that does not
  stop the restore: extended attributes the kernel refused), which the parent merges.
* files of several blobs, whose blobs may be in packs of different processes, are created
  by the parent before the fork and finished (owner, mode, times) by it after the
  children: a worker opens one only to write its blobs at their offsets. Everything else
  a worker creates and finishes itself.

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

from safehold import errors, runtime
from safehold.engine.progress import Progress
from safehold.errors import SafeholdError
from safehold.ids import PackId

__all__ = ["THREADS", "run_forked", "usable"]

# Threads per process: one runs while the other waits for a direct write to reach the disk
# (one thread per process: 3.6-3.8 s on the benchmark data, two: 2.9 s).
THREADS = 2
# Forking costs a few milliseconds; below this many packs per child the threads do.
MIN_PACKS_PER_CHILD = 2

_TICKET = struct.Struct("<I")
_RECORD = struct.Struct("<Bqq")  # kind, then two numbers (progress) or a length (error)
_PROGRESS, _ERROR, _NOTES = 1, 2, 3
_CHUNK = 4096  # ticket writes of at most PIPE_BUF bytes are atomic: whole records only

Work = Callable[[PackId, Any], None]


def usable(processes: int, packs: int) -> bool:
    """Whether forked workers are worth it: more than one process asked for, ``fork`` exists,
    and at least ``MIN_PACKS_PER_CHILD`` packs for each."""
    return processes > 1 and hasattr(os, "fork") and packs >= MIN_PACKS_PER_CHILD * processes


class _PipeProgress(Progress):
    """A child's progress sink: records into the report pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        os.write(self.fd, _RECORD.pack(_PROGRESS, items, nbytes))


def run_forked(
    work: Work,
    packs: Sequence[tuple[PackId, Any]],
    processes: int,
    progress: Progress,
    child_setup: Callable[[Progress], None],
    *,
    child_notes: Callable[[], list[dict[str, Any]]] | None = None,
    on_notes: Callable[[Any], None] | None = None,
) -> None:
    """Run ``work(pack_id, blobs)`` for every pack, in this process and ``processes - 1``
    forked children, ``THREADS`` threads each; ``child_setup(progress)`` prepares a child's
    copy of the caller's state. Raises the first error (a child's with its type, message and
    hint), or a SafeholdError if a child died without one. A child that finished sends
    each of its ``child_notes()`` (JSON objects) to ``on_notes``, which gets a list of them
    in a thread of this process."""
    reports_r, reports_w = os.pipe()
    tickets_r, tickets_w = os.pipe()
    pids: list[int] = []
    try:
        # The collector of a child would write to the header of every object it
        # inherited, copying the parent's memory page by page: frozen objects it leaves
        # alone.
        with runtime.frozen_collector():
            for _ in range(processes - 1):
                try:
                    pid = os.fork()
                except OSError:
                    if pids:
                        break  # fewer children than asked: the others share the tickets
                    raise
                if pid == 0:
                    os.close(reports_r)
                    os.close(tickets_w)
                    # (never returns)
                    _child(work, packs, tickets_r, reports_w, child_setup, child_notes)
                pids.append(pid)
    except BaseException:
        for fd in (reports_r, reports_w, tickets_r, tickets_w):
            os.close(fd)
        _end(pids, signal.SIGKILL)
        raise
    os.close(reports_w)
    # Reports and tickets are handled by a thread; this one works like a child meanwhile.
    outcome: list[BaseException | None] = []
    stop = threading.Event()

    def relay() -> None:
        try:
            outcome.append(_relay(reports_r, tickets_w, len(packs), progress, pids, stop, on_notes))
        except BaseException as exc:
            outcome.append(exc)
            stop.set()

    relayer = threading.Thread(target=relay, name="restore-relay", daemon=True)
    relayer.start()
    try:
        _work(work, packs, tickets_r, stop)
    except BaseException:
        _signal(pids, signal.SIGKILL)  # the relay sees their pipes close and ends
        raise
    finally:
        relayer.join()
        os.close(reports_r)
        os.close(tickets_r)
        statuses = _end(pids, None)
    if outcome and outcome[0] is not None:
        raise outcome[0]
    for status in statuses:
        if status:
            raise SafeholdError(
                f"a restore worker process ended unexpectedly ({_describe(status)})",
                hint="run the restore again; the repository is unchanged",
            )


def _work(
    work: Work, packs: Sequence[tuple[PackId, Any]], tickets: int, stop: threading.Event
) -> None:
    """``THREADS`` threads taking tickets until the pipe is closed or ``stop`` is set; the
    first error sets it and is raised."""

    def take() -> None:
        try:
            while not stop.is_set():
                raw = os.read(tickets, _TICKET.size)
                if len(raw) < _TICKET.size:
                    return  # closed: no more packs
                work(*packs[_TICKET.unpack(raw)[0]])
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(THREADS, thread_name_prefix="restore") as pool:
        futures = [pool.submit(take) for _ in range(THREADS)]
        try:
            for fut in futures:
                fut.result()
        except BaseException:  # (an interrupt, here): the threads stop after their pack
            stop.set()
            raise


def _relay(
    reports: int,
    tickets: int,
    count: int,
    progress: Progress,
    pids: list[int],
    stop: threading.Event,
    on_notes: Callable[[Any], None] | None = None,
) -> BaseException | None:
    """Hand out tickets and forward reports until every child has closed its end."""
    pending = memoryview(b"".join(_TICKET.pack(k) for k in range(count)))
    os.set_blocking(tickets, False)
    failure: BaseException | None = None
    buf = bytearray()
    # poll, not select: the restore keeps folders open (folders.py), so these pipes
    # may well be numbered past select's limit of 1,024.
    poller = select.poll()
    poller.register(reports, select.POLLIN)
    poller.register(tickets, select.POLLOUT)

    def no_more_tickets() -> None:
        nonlocal tickets
        poller.unregister(tickets)
        os.close(tickets)
        tickets = -1

    try:
        while True:
            events = dict(poller.poll())
            if tickets >= 0 and events.get(tickets, 0):
                with contextlib.suppress(BlockingIOError):
                    pending = pending[os.write(tickets, pending[:_CHUNK]) :]
                if not pending:
                    no_more_tickets()
            if not events.get(reports, 0):
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
                if kind == _NOTES:
                    if on_notes is not None:
                        with contextlib.suppress(ValueError):
                            on_notes(json.loads(raw))
                    continue
                if failure is None:
                    failure = _rebuild(raw)
                    stop.set()
                    if tickets >= 0:  # no more work for anyone
                        no_more_tickets()
                    _signal(pids, signal.SIGTERM)
    finally:
        if tickets >= 0:
            os.close(tickets)


def _child(
    work: Work,
    packs: Sequence[tuple[PackId, Any]],
    tickets: int,
    reports: int,
    child_setup: Callable[[Progress], None],
    child_notes: Callable[[], list[dict[str, Any]]] | None,
) -> None:
    code = 0
    try:
        # A SIGTERM handler of the parent's (a service's) is not for a child: it just ends.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        child_setup(_PipeProgress(reports))
        _work(work, packs, tickets, threading.Event())
        for note in child_notes() if child_notes is not None else []:
            raw = _note_record(note)
            if raw:
                os.write(reports, raw)
    except BaseException as exc:
        code = 1
        with contextlib.suppress(BaseException):
            raw = _describe_error(exc)
            os.write(reports, _RECORD.pack(_ERROR, len(raw), 0) + raw)
    finally:
        os._exit(code)


def _note_record(note: dict[str, Any]) -> bytes:
    """One note as a record of at most PIPE_BUF bytes, written whole (atomically) between
    the other children's records: the paths it names are cut to fit ("" if nothing fits)."""
    note = dict(note)
    paths = list(note.get("paths", []))
    while True:
        note["paths"] = paths
        raw = json.dumps([note]).encode()
        if _RECORD.size + len(raw) <= select.PIPE_BUF:
            return _RECORD.pack(_NOTES, len(raw), 0) + raw
        if not paths:
            return b""
        paths.pop()


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
