"""Tiny files read, hashed, compressed and sealed in a forked process.

A first backup of many small files was bound by one thread: the reader of tiny files
(read_queue.py) did a few system calls, a hash, a compression and a seal per file, and
every system call handed the interpreter lock to the walk or the prescan and waited to get
it back (py-spy: 55 % of that thread's samples at its ``readv``, while the walk waited
for room in the queue a quarter of its time; docs/benchmarks.md "Session 18"). Here that
work runs in a child process
with its own interpreter lock, on the other core: the parent sends the child each file's
path and the walk's stat (size, times), the child reads the file, compares its times
after reading as :class:`FileReader` does, and sends back the blob id and the sealed blob;
the parent's receiving thread only checks the id against the index and copies the sealed
bytes into the pack (``BlobSaver.save_sealed``). A blob already stored was hashed,
compressed and sealed for nothing, which a first backup rarely meets. A first backup of
200,000 mail-sized files took 8.4-9.6 s instead of 13.3-14.1; two children were no faster
than one on two cores then. Since the child also reads the files' extended attributes it is
the side the others wait for, and a backup without a parent snapshot forks two
(``backup.TINY_PROCS_FIRST``: 9.35 -> 8.66 s for the same tree).

Only where the entry point allows forking (``safehold.runtime.may_fork``: the command line),
and forked before the readers start, while the other threads (the prescan, the lock's
refresher) hold no lock the child uses; the child touches nothing of the parent's but
the key, the compressor settings and its own pipes, ignores SIGINT (the parent stops it)
and leaves with ``os._exit``. Without it, tiny files are read by the first reader thread
as before.

The protocol, in order on each child's two pipes (a child answers its requests in order):

* request: expected size, mtime and ctime in ns (the walk's), path length; the path;
* response: kind, changed (the file changed while read, as FileReader says), compression
  id, bytes read, errno, payload length, attributes' length; then a blob's id (32 bytes)
  and its sealed payload, or an error's message; then the file's extended attributes.

Where the backup saves extended attributes (``Sealer.attrs``), the child also reads those
of each file it is sent, before its content (a change to them moves the ctime, which the
read compares), and the walk does not: ``llistxattr`` was the walk's most frequent wait
for the interpreter lock, and the walk is what a backup of many small files waits for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from safehold import runtime
from safehold.crypto.aead import OVERHEAD, Aead
from safehold.engine import xattrs as xa
from safehold.errors import SafeholdError
from safehold.ids import BlobId
from safehold.repository.compress import compress
from safehold.repository.tree import NO_XATTRS

__all__ = ["BLOB", "EMPTY", "LARGER", "OS_ERROR", "Result", "Sealer", "TinyProcs", "read_whole"]

J = TypeVar("J")

_REQ = struct.Struct("<qqqI")
_RESP = struct.Struct("<BBBqiII")
_ATTR = struct.Struct("<HI")  # an attribute's name length, value length
_PROBLEM = struct.Struct("<H")  # why some attributes could not be read: its length
ID_LEN = 32
# The parent's buffer for a child's answers (a pipe read returns at most what the pipe
# holds, 64 KiB by default); it doubles for an answer larger than it (many attributes).
RECEIVE_BUFFER = 1 << 20
# Kinds of response: a blob; an empty file; the file could not be read; it has grown past
# one chunk since the walk (the parent reads it itself, through the chunker).
BLOB, EMPTY, OS_ERROR, LARGER = range(4)
_FAILED = 9  # the child itself failed: its message, and it ends
# A child writes what it has answered once it holds this much, so the parent works on it
# while the child goes on.
_FLUSH = 64 * 1024


@dataclass(slots=True)
class Result:
    """A child's answer for one file: ``kind`` (BLOB, EMPTY, OS_ERROR, LARGER), whether it
    changed while read, the bytes read; a blob's id, compression id and sealed payload (a
    view, valid during the callback only); an error's errno and message; its attributes."""

    kind: int
    changed: bool
    size: int
    blob_id: BlobId
    comp_id: int
    sealed: memoryview
    errno: int
    message: str
    # The file's extended attributes and why some could not be read, where the child
    # reads them (``Sealer.attrs``); None where it does not.
    attrs: Mapping[str, bytes] | None = None
    attrs_problem: str = ""


@dataclass(frozen=True)
class Sealer:
    """What a child needs to turn a file's bytes into a stored blob: the keyed hash naming
    it, the cipher, the compression level, the largest file it reads (one chunk), and the
    extended attributes it reads with each file (None: none, the walk reads them)."""

    blob_id: Callable[[bytes | memoryview], BlobId]
    aead: Aead
    level: int | None
    max_size: int
    attrs: xa.Choice | None = None


class _Child:
    __slots__ = ("inflight", "pid", "receiver", "requests", "responses")

    def __init__(self, pid: int, requests: int, responses: int) -> None:
        self.pid = pid
        self.requests = requests  # the parent's end, written
        self.responses = responses  # read by the receiver
        self.inflight: deque[object] = deque()
        self.receiver: threading.Thread | None = None


class TinyProcs(Generic[J]):
    """``processes`` forked children sealing tiny files, used as a context manager around
    the readers: :meth:`submit` sends jobs; ``on_results([(job, result), ...])`` runs in a
    receiving thread of this process for the answers that came in together, in the order a
    child got them (each result's ``sealed`` is valid only during that call). Leaving
    normally waits for every answer and raises the first error (a child's, or
    ``on_results``');
    leaving with an exception ends the children."""

    def __init__(
        self,
        sealer: Sealer,
        describe: Callable[[J], tuple[str, int, int, int]],
        on_results: Callable[[list[tuple[J, Result]]], None],
        processes: int = 1,
    ) -> None:
        self._sealer = sealer
        self._describe = describe  # job -> (path, size, mtime ns, ctime ns)
        self._on_results = on_results
        self._count = max(1, processes)
        self._children: list[_Child] = []
        self._next = 0
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def reads_attrs(self) -> bool:
        """Whether the children read each file's extended attributes (``Sealer.attrs``)."""
        return self._sealer.attrs is not None

    # --- the parent -----------------------------------------------------------------------

    def __enter__(self) -> TinyProcs[J]:
        try:
            with runtime.frozen_collector():
                for _ in range(self._count):
                    self._children.append(self._fork())
        except BaseException:
            self._end(kill=True)
            raise
        for child in self._children:
            child.receiver = threading.Thread(
                target=self._receive, args=(child,), name="tiny-receive", daemon=True
            )
            child.receiver.start()
        return self

    def _fork(self) -> _Child:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # (never returns)
            os.close(req_w)
            os.close(resp_r)
            for other in self._children:  # an earlier child's ends are not this one's
                os.close(other.requests)
                os.close(other.responses)
            _child_main(self._sealer, req_r, resp_w)
        os.close(req_r)
        os.close(resp_w)
        return _Child(pid, req_w, resp_r)

    def submit(self, jobs: Sequence[J]) -> None:
        """Send ``jobs`` to a child (the next in turn); raises the first error met so far."""
        if self._error is not None:
            raise self._error
        child = self._children[self._next]
        self._next = (self._next + 1) % len(self._children)
        parts = []
        for job in jobs:
            path, size, mtime, ctime = self._describe(job)
            raw = os.fsencode(path)
            parts.append(_REQ.pack(size, mtime, ctime, len(raw)))
            parts.append(raw)
        # In the queue before the child can answer: the receiver pops what it answers.
        child.inflight.extend(jobs)
        try:
            _write_all(child.requests, b"".join(parts))
        except OSError as exc:  # the child is gone: its receiver says why
            if child.receiver is not None:
                child.receiver.join()
            raise self._error or SafeholdError(
                f"the reader process of small files ended unexpectedly ({exc})"
            ) from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end(kill=exc is not None)
        if exc is None and self._error is not None:
            raise self._error

    def _end(self, *, kill: bool) -> None:
        """No more requests: every child answers what it has and ends (or is killed)."""
        for child in self._children:
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.close(child.requests)
        for child in self._children:
            if child.receiver is not None:
                child.receiver.join()
            else:
                os.close(child.responses)
            status = _wait(child.pid)
            if status and self._error is None and not kill:
                self._fail(
                    SafeholdError(
                        f"the reader process of small files ended unexpectedly "
                        f"({_describe_status(status)})",
                        hint="run the backup again; the repository is unchanged",
                    )
                )
        self._children = []

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    def _receive(self, child: _Child) -> None:
        """Read the child's answers and hand them to ``on_results``, until it ends.

        Into one buffer, reused: a new one per read (os.read's) was fresh memory for the
        kernel to page in on every read, a fault per 4 KiB of sealed blobs."""
        buf = bytearray(RECEIVE_BUFFER)
        view = memoryview(buf)
        have = 0
        fd = child.responses
        try:
            while True:
                if have == len(buf):  # one answer larger than the buffer: a larger buffer
                    buf = bytearray(2 * len(buf))
                    buf[:have] = view[:have]
                    view = memoryview(buf)
                got = os.readv(fd, (view[have:],))
                if not got:
                    break
                have += got
                pos = self._answers(child, view[:have])
                if pos:  # the start of an answer still coming goes to the front
                    view[: have - pos] = bytes(view[pos:have])
                    have -= pos
            if child.inflight and self._error is None:
                self._fail(
                    SafeholdError(
                        "the reader process of small files ended before answering",
                        hint="run the backup again; the repository is unchanged",
                    )
                )
        except BaseException as exc:
            self._fail(exc)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)  # it may be waiting for us to read
        finally:
            os.close(fd)

    def _answers(self, child: _Child, view: memoryview) -> int:
        """Handle the complete answers at the start of ``view``; how many bytes they took."""
        pos, end = 0, len(view)
        header = _RESP.size
        reads_attrs = self.reads_attrs
        batch: list[tuple[J, Result]] = []
        while end - pos >= header:
            kind, changed, comp_id, size, err, plen, alen = _RESP.unpack_from(view, pos)
            start = pos + header
            extra = ID_LEN if kind == BLOB else 0
            stop = start + extra + plen
            if stop + alen > end:
                break
            if kind == _FAILED:
                if batch:  # what came before the failure is answered
                    self._on_results(batch)
                raise SafeholdError(
                    f"the reader process of small files failed: {bytes(view[start:stop]).decode()}"
                )
            job = child.inflight.popleft()
            message = bytes(view[start:stop]).decode(errors="replace") if kind == OS_ERROR else ""
            blob_id = BlobId(bytes(view[start : start + ID_LEN])) if kind == BLOB else BlobId(b"")
            attrs, problem = _decode_attrs(view[stop : stop + alen]) if reads_attrs else (None, "")
            result = Result(
                kind,
                bool(changed),
                size,
                blob_id,
                comp_id,
                view[start + extra : stop],
                err,
                message,
                attrs,
                problem,
            )
            batch.append((job, result))  # type: ignore[arg-type]
            pos = stop + alen
        if batch:
            self._on_results(batch)
        return pos


# --- the child ---------------------------------------------------------------------------


def _child_main(sealer: Sealer, requests: int, responses: int) -> None:
    code = 0
    try:
        # The terminal's Ctrl-C reaches the whole process group: the parent decides. (A
        # SIGTERM handler of the parent's is not for a child: it just ends.)
        with contextlib.suppress(ValueError):  # (not the main thread: nothing to change)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _serve(_Work(sealer), requests, responses)
    except BaseException as exc:
        code = 1
        with contextlib.suppress(BaseException):
            raw = f"{type(exc).__name__}: {exc}".encode()[:4000]
            _write_all(responses, _RESP.pack(_FAILED, 0, 0, 0, 0, len(raw), 0) + raw)
    finally:
        os._exit(code)


def _serve(work: _Work, requests: int, responses: int) -> None:
    pending = b""
    out: list[bytes] = []
    held = 0
    while True:
        chunk = os.read(requests, 1 << 16)
        if not chunk:
            return
        pending = pending + chunk if pending else chunk
        pos, end = 0, len(pending)
        while end - pos >= _REQ.size:
            size, mtime, ctime, plen = _REQ.unpack_from(pending, pos)
            start = pos + _REQ.size
            if start + plen > end:
                break
            answer = work.one(pending[start : start + plen], size, mtime, ctime)
            out.append(answer)
            held += len(answer)
            pos = start + plen
            if held >= _FLUSH:
                _write_all(responses, b"".join(out))
                out.clear()
                held = 0
        pending = pending[pos:]
        if out:
            _write_all(responses, b"".join(out))
            out.clear()
            held = 0


class _Work:
    """One file, as FileReader reads a file of one chunk: its answer."""

    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer
        self.buf = memoryview(bytearray(sealer.max_size + 1))

    def one(self, path: bytes, size: int, mtime: int, ctime: int) -> bytes:
        attrs = b""
        if self.sealer.attrs is not None:
            # Before the content: a change to them after this moves the ctime compared below.
            attrs = _encode_attrs(*xa.read(os.fsdecode(path), self.sealer.attrs))
        return self._content(path, size, mtime, ctime, attrs)

    def _content(self, path: bytes, size: int, mtime: int, ctime: int, attrs: bytes) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            return _error(exc, attrs)
        try:
            n = self._read(fd, size)
            after = os.fstat(fd)
            changed = False
            if not (
                after.st_ctime_ns == ctime and after.st_mtime_ns == mtime and after.st_size == size
            ):
                os.lseek(fd, 0, os.SEEK_SET)
                n = self._read(fd, after.st_size)
                again = os.fstat(fd)
                changed = (
                    again.st_ctime_ns != after.st_ctime_ns
                    or again.st_mtime_ns != after.st_mtime_ns
                    or again.st_size != after.st_size
                )
        except OSError as exc:
            return _error(exc, attrs)
        finally:
            os.close(fd)
        sealer = self.sealer
        if n > sealer.max_size:
            return _RESP.pack(LARGER, changed, 0, n, 0, 0, len(attrs)) + attrs
        if not n:
            return _RESP.pack(EMPTY, changed, 0, 0, 0, 0, len(attrs)) + attrs
        data = self.buf[:n]
        bid = sealer.blob_id(data)
        comp_id, payload = compress(data, sealer.level)
        sealed = bytearray(OVERHEAD + len(payload))
        sealer.aead.seal_into(payload, bid + bytes((comp_id,)), memoryview(sealed))
        head = _RESP.pack(BLOB, changed, comp_id, n, 0, len(sealed), len(attrs))
        return head + bid + sealed + attrs

    def _read(self, fd: int, expected: int) -> int:
        return read_whole(fd, self.buf, expected)


def read_whole(fd: int, view: memoryview, expected: int) -> int:
    """Read ``fd`` into ``view`` until it is full, the file ends, or ``expected`` bytes
    (the size the walk saw: no second call to find the end of the file; the fstat after
    reading catches a file that grew); how many bytes were read."""
    n = 0
    while n < len(view):
        got = os.readv(fd, (view[n:],))
        if not got:
            break
        n += got
        if n == expected:
            break
    return n


def _error(exc: OSError, attrs: bytes) -> bytes:
    raw = (exc.strerror or str(exc)).encode(errors="replace")[:2000]
    return _RESP.pack(OS_ERROR, 0, 0, 0, exc.errno or 0, len(raw), len(attrs)) + raw + attrs


def _encode_attrs(attrs: Mapping[str, bytes], problem: str) -> bytes:
    """A file's attributes and why some could not be read, as a response carries them
    (nothing at all for the usual: none, no problem)."""
    if not attrs and not problem:
        return b""
    raw = problem.encode(errors="replace")[:2000]
    parts = [_PROBLEM.pack(len(raw)), raw]
    for name, value in attrs.items():
        encoded = os.fsencode(name)
        parts += [_ATTR.pack(len(encoded), len(value)), encoded, value]
    return b"".join(parts)


def _decode_attrs(raw: memoryview) -> tuple[Mapping[str, bytes], str]:
    if not raw:
        return NO_XATTRS, ""
    (n,) = _PROBLEM.unpack_from(raw, 0)
    pos = _PROBLEM.size + n
    problem = bytes(raw[_PROBLEM.size : pos]).decode(errors="replace")
    attrs = {}
    while pos < len(raw):
        nlen, vlen = _ATTR.unpack_from(raw, pos)
        pos += _ATTR.size
        name = os.fsdecode(bytes(raw[pos : pos + nlen]))
        attrs[name] = bytes(raw[pos + nlen : pos + nlen + vlen])
        pos += nlen + vlen
    return attrs or NO_XATTRS, problem


# --- both --------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
