"""Running dump and restore tools: their output streamed, their failures made loud.

:func:`command_stream` starts a producer (``pg_dump``, ``redis-cli --rdb -``) and yields its
standard output; :func:`command_sink` starts a consumer (``pg_restore``, ``mariadb``) and
yields its standard input. Both keep the last :data:`STDERR_KEEP` bytes of the tool's
standard error (read by a thread, so a chatty tool never blocks on a full pipe) and, on
exit, raise :class:`CommandFailed` with them when the tool failed, so a failed dump never
looks complete.

Each tool runs in a process group (and session) of its own, a :class:`ProcessGroup`: a
failure, the run's timeout or Ctrl-C ends everything it started, not only the program at
its top, and a process it left running in the background (``sleep 30 &``) cannot hold the
run: safehold reads its output to the end only while that end can still come.

* Standard error, and a hook's output: read until every process holding the pipe has
  closed it, but no longer than :data:`OUTPUT_GRACE` seconds after the tool exited; then
  the group is ended and reading stops.
* A dump's standard output is the data, so it is read to its end while the tool runs and,
  after it exited with status 0, as long as data still comes (a compressor behind it may
  still be writing): :data:`DRAIN_IDLE` seconds without a byte end the group and fail the
  dump, since what was read may be incomplete. A tool that exited with another status
  fails the dump at once, whoever still holds the pipe.

Secrets go through ``env`` (``PGPASSWORD``, ``MYSQL_PWD``, ``REDISCLI_AUTH``) or files,
never through ``argv``, which ``ps`` shows to every user of the machine.
"""

from __future__ import annotations

import fcntl
import io
import os
import select
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, BinaryIO

from safehold.errors import SourceError

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

__all__ = [
    "DRAIN_IDLE",
    "OUTPUT_GRACE",
    "STDERR_KEEP",
    "CommandFailed",
    "ProcessGroup",
    "Tail",
    "ToolMissing",
    "command_sink",
    "command_stream",
    "find_tool",
    "stderr_excerpt",
]

STDERR_KEEP = 8192  # bytes of a tool's standard error kept (the last ones): docs/sources
OUTPUT_GRACE = 2.0  # seconds descendants may keep a tool's stderr open after it exited
DRAIN_IDLE = 10.0  # seconds without data on a dump's stdout, after it exited, before giving up
_EXCERPT_LINES = 12  # lines of standard error shown in a message (all are in the record)
_EXCERPT_CHARS = 2000
_LINE_CHARS = 300


class ToolMissing(SourceError):
    """A dump or restore tool is not installed."""


class CommandFailed(SourceError):
    """A tool exited with a failure status (or was killed).

    ``stderr`` is the end of its standard error (at most :data:`STDERR_KEEP` bytes); the
    message shows its last lines, the run record keeps it whole.
    """

    def __init__(
        self, message: str, *, stderr: str = "", status: int | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.stderr = stderr
        self.status = status


def find_tool(name: str, package: str, *, path: str | None = None) -> str:
    """The full path of ``name``, or a ToolMissing error naming the package to install."""
    found = shutil.which(name, path=path)
    if found is None:
        raise ToolMissing(
            f"{shlex.quote(name)} was not found on PATH",
            hint=f"install it (Debian/Ubuntu: apt-get install {package}) or set the tool's "
            "path in the source's configuration",
        )
    return found


# --- process groups ---------------------------------------------------------------------


# The longest a wait in the main thread sleeps before Python looks at pending signals.
SIGNAL_SLICE = 0.2


class ProcessGroup:
    """A started process that leads a process group of its own (``start_new_session``).

    The leader is reaped only by :meth:`reap` (or :meth:`end`/:meth:`kill`, which end with
    it): until then its id stays taken, even once it exited, so signalling its group can
    never reach an unrelated process that got the id again.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._reaped = False
        try:
            # Readable once the leader exits: waiting for it is a select, which a signal
            # (the run's timeout, Ctrl-C) interrupts.
            self.exit_fd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.exit_fd = None  # an old kernel: poll instead

    def status(self) -> int | None:
        """The leader's exit status (negative: killed by that signal), None while it runs;
        it is not reaped."""
        if self._reaped:
            return self.proc.returncode
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped behind our back (subprocess' own bookkeeping)
            return self.proc.poll()
        if info is None or info.si_pid == 0:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def wait_exit(self, timeout: float | None) -> bool:
        """Wait until the leader exits (not reaping it); False if ``timeout`` passed first."""
        end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        if self.exit_fd is not None:
            with selectors.DefaultSelector() as sel:
                sel.register(self.exit_fd, selectors.EVENT_READ)
                while self.status() is None:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    # In slices: a signal the kernel gives to another thread (one reading
                    # the tool's output) leaves this select asleep, and Python runs its
                    # handler (Ctrl-C, the run's timeout) only once this thread wakes.
                    sel.select(SIGNAL_SLICE if left is None else min(left, SIGNAL_SLICE))
            return True
        while self.status() is None:
            if end is not None and time.monotonic() >= end:
                return False
            time.sleep(0.02)
        return True

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group (the leader alone if the group may not be signalled);
        nothing once reaped."""
        if self._reaped:
            return  # the group id may belong to someone else by now
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass  # the group is gone already
        except PermissionError:
            # A member changed its identity (a setuid program): end the leader at least.
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def reap(self) -> int:
        """Wait for the leader and return its exit status (negative: killed by that signal)."""
        code = self.proc.wait()
        self._reaped = True
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None
        return code

    def end(self, grace: float, *, gone: Callable[[float], bool] | None = None) -> int:
        """SIGTERM the group, then SIGKILL what is left after ``grace`` seconds; reap.

        Without ``gone``, what is left is judged by the leader. ``gone(timeout)`` tells
        instead whether the rest ended (its output pipes closed) within ``timeout``, for a
        leader that had already exited.
        """
        self.signal(signal.SIGTERM)
        if gone is not None:
            gone(grace)
        else:
            self.wait_exit(grace)
        self.signal(signal.SIGKILL)
        return self.reap()

    def kill(self) -> int:
        """SIGKILL the group and reap the leader; returns its exit status."""
        self.signal(signal.SIGKILL)
        return self.reap()


class Tail:
    """Reads a pipe on a thread, keeping its last ``keep`` bytes, until its end or
    :meth:`stop`. ``on_data`` sees every piece as it comes (on the reading thread)."""

    def __init__(
        self,
        pipe: IO[bytes],
        keep: int,
        *,
        on_data: Callable[[bytes], None] | None = None,
        name: str = "output",
    ) -> None:
        self._pipe = pipe
        self._keep = keep
        self._on_data = on_data
        self._buf = bytearray()
        self.truncated = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"tail-{name}")
        self._thread.start()

    def _run(self) -> None:
        fd = self._pipe.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fd == self._wake_r:
                        return  # stop(): someone else holds the pipe, we no longer wait
                    try:
                        piece = os.read(fd, 65536)
                    except OSError:
                        return
                    if not piece:
                        return
                    self._buf += piece
                    if len(self._buf) > 2 * self._keep:
                        del self._buf[: -self._keep]
                        self.truncated = True
                    if self._on_data is not None:
                        self._on_data(piece)

    @property
    def done(self) -> bool:
        """Whether the pipe's end was reached (or reading stopped)."""
        return not self._thread.is_alive()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the pipe's end; True once it came."""
        self._thread.join(max(0.0, timeout))
        return self.done

    def stop(self) -> bool:
        """Stop reading (the thread ends) and close the pipe; True if its end had come.
        Calling it again does nothing more."""
        reached = self.done
        if self._wake_w < 0:
            return reached
        if not reached:
            os.write(self._wake_w, b"x")
            self._thread.join()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1
        self._pipe.close()
        return reached

    def data(self) -> bytes:
        """The last ``keep`` bytes read (``truncated`` says whether there were more)."""
        if len(self._buf) > self._keep:
            self.truncated = True
        return bytes(self._buf[-self._keep :])

    def text(self) -> str:
        """:meth:`data` as text, undecodable bytes replaced."""
        return self.data().decode(errors="replace")


def wait_all(tails: Sequence[Tail], until: float) -> bool:
    """Wait until every tail reached its pipe's end, or ``until`` (a monotonic time)."""
    return all(t.wait(until - time.monotonic()) for t in tails)


def stderr_excerpt(text: str) -> list[str]:
    """The last lines of ``text`` that fit in a message (at most 12 lines, 2,000
    characters), each cut to 300 characters; the first says how many were left out."""
    lines = [line.rstrip() for line in text.rstrip().splitlines()]
    while lines and not lines[0].strip():
        del lines[0]
    shown: list[str] = []
    size = 0
    for whole in reversed(lines):
        line = whole if len(whole) <= _LINE_CHARS else whole[: _LINE_CHARS - 1] + "…"
        if len(shown) == _EXCERPT_LINES or (shown and size + len(line) > _EXCERPT_CHARS):
            break
        shown.insert(0, line)
        size += len(line) + 1
    if len(shown) < len(lines):
        shown.insert(0, f"[… {len(lines) - len(shown)} earlier lines]")
    return shown


# --- running tools ----------------------------------------------------------------------


def _start(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    *,
    stdin: int | None,
    stdout: int | None,
    cwd: str | None,
    what: str,
) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **(env or {})}
    try:
        return subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd,
            # Its own session: ended as a whole, and no terminal to prompt on (a tool asking
            # for a password fails at once instead of waiting for nobody).
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ToolMissing(
            f"{what}: could not start {shlex.quote(argv[0])}: no such file or command",
            hint="install it or fix its path",
        ) from exc
    except OSError as exc:
        raise SourceError(
            f"{what}: could not start {shlex.quote(argv[0])}: {exc.strerror}"
        ) from exc


def _tool(argv: Sequence[str]) -> str:
    return shlex.quote(os.path.basename(argv[0]))


def _failure(what: str, code: int, stderr: str, tool: str) -> CommandFailed:
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    msg = f"{what}: {tool} {how}"
    shown = stderr_excerpt(stderr)
    if len(shown) == 1 and not shown[0].startswith("[…"):
        msg += f": {shown[0].strip()}"
    elif shown:
        # The summary stays the first line (logs and notifications show that one).
        msg += "\n  its standard error ended with:\n" + "\n".join(f"    {s}" for s in shown)
    return CommandFailed(msg, stderr=stderr.rstrip(), status=code)


def _finish_stderr(tail: Tail, group: ProcessGroup, grace: float = OUTPUT_GRACE) -> str:
    """The tool's standard error once it exited: to its end, or what came within
    ``grace`` seconds (a process it left running may hold the pipe: the group is then
    killed, which closes it)."""
    if not tail.wait(grace):
        group.signal(signal.SIGKILL)
        tail.wait(0.5)
    tail.stop()
    return tail.text()


# The default 64 KiB made 16 times as many reads: reading 2 GB took 0.82 CPU s instead
# of the 0.60 of a plain blocking read, 0.55 with this.
_PIPE_SIZE = 1 << 20


def _widen(fd: int) -> None:
    """Let the tool's output pipe hold 1 MiB (Linux; the default limit for any user)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size, or not Linux: the default is fine


class _DumpOutput(io.RawIOBase):
    """A dump tool's standard output, read without blocking past the tool's end: a tool
    that failed fails the read at once; after one that exited with status 0, whatever it
    left behind gets :data:`DRAIN_IDLE` seconds without data before the read fails."""

    def __init__(self, group: ProcessGroup, tail: Tail, what: str, tool: str) -> None:
        super().__init__()
        assert group.proc.stdout is not None
        self._pipe = group.proc.stdout
        self._fd = self._pipe.fileno()
        os.set_blocking(self._fd, False)  # data that is there is read without a select
        self._group = group
        self._tail = tail
        self._what = what
        self._tool = tool
        self._idle_since: float | None = None  # set once the tool exited with status 0
        _widen(self._fd)
        # select.poll, not a selectors object: this is on the path of every read that
        # finds the pipe empty, and the dump's reader is usually faster than its tool.
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        if group.exit_fd is not None:
            self._poll.register(group.exit_fd, select.POLLIN)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Buffer) -> int:
        while True:
            try:
                n = os.readv(self._fd, [buf])
            except BlockingIOError:
                self._wait()
                continue
            if n and self._idle_since is not None:
                self._idle_since = time.monotonic()
            return n

    def _wait(self) -> None:
        if self._idle_since is None:
            code = self._group.status()
            if code is None:
                # Until data comes or the tool ends (a poll on an old kernel); the run's
                # timeout or Ctrl-C interrupts the poll.
                self._poll.poll(None if self._group.exit_fd is not None else 50)
                return
            if code != 0:
                # It failed: what it wrote is no dump, whoever still holds the pipe.
                self._group.signal(signal.SIGKILL)
                stderr = _finish_stderr(self._tail, self._group, 0.5)
                self._group.reap()
                raise _failure(self._what, code, stderr, self._tool)
            self._idle_since = time.monotonic()
            if self._group.exit_fd is not None:
                self._poll.unregister(self._group.exit_fd)
        left = self._idle_since + DRAIN_IDLE - time.monotonic()
        if left > 0:
            self._poll.poll(left * 1000)
            return
        self._group.signal(signal.SIGKILL)
        _finish_stderr(self._tail, self._group, 0.5)
        self._group.reap()
        raise SourceError(
            f"{self._what}: {self._tool} exited with status 0, but a process it started still "
            f"held its standard output {DRAIN_IDLE:g} s later without writing to it, so what "
            "was read may be incomplete (its process group was killed)",
            hint="wait for background processes in the command, or redirect their output "
            "(cmd >/dev/null 2>&1 &)",
        )

    def close(self) -> None:
        if not self.closed:
            self._pipe.close()
        super().close()


@contextmanager
def command_stream(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Iterator[BinaryIO]:
    """Run ``argv`` and yield its standard output; raise CommandFailed if it fails.

    ``what`` names the job in messages (``"dump of database 'shop'"``). If the body raises
    (or the run's timeout interrupts it), the tool's process group is killed and the
    body's exception propagates.
    """
    proc = _start(argv, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=cwd, what=what)
    assert proc.stdout is not None and proc.stderr is not None
    group = ProcessGroup(proc)
    tail = Tail(proc.stderr, STDERR_KEEP, name="stderr")
    tool = _tool(argv)
    out = io.BufferedReader(_DumpOutput(group, tail, what, tool), 1 << 16)
    try:
        yield out
        # The consumer stopped reading: anything left unread means the stream was not
        # taken whole, which the engine never does.
        leftover = out.read(1)
        group.wait_exit(None)  # its output ended; its work may not have
        if group.status() != 0:
            group.signal(signal.SIGKILL)  # it failed: what it left running goes too
        stderr = _finish_stderr(tail, group)
        code = group.reap()
    except BaseException:
        group.kill()
        tail.stop()
        raise
    finally:
        out.close()
    if code != 0:
        raise _failure(what, code, stderr, tool)
    if leftover:
        raise SourceError(f"{what}: the stream was not read to its end")


@contextmanager
def command_sink(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    capture_stdout: bool = False,
) -> Iterator[BinaryIO]:
    """Run ``argv`` and yield its standard input; on exit, wait and raise if it failed."""
    proc = _start(
        argv,
        env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
        cwd=cwd,
        what=what,
    )
    assert proc.stdin is not None and proc.stderr is not None
    group = ProcessGroup(proc)
    tail = Tail(proc.stderr, STDERR_KEEP, name="stderr")
    tails = [tail]
    if proc.stdout is not None:
        tails.append(Tail(proc.stdout, STDERR_KEEP, name="stdout"))
    tool = _tool(argv)
    try:
        try:
            yield proc.stdin  # type: ignore[misc]
            proc.stdin.close()
        except BrokenPipeError:
            # The tool quit early; its exit status and message say why.
            group.wait_exit(None)
            code = group.status() or 1
            group.signal(signal.SIGKILL)
            raise _failure(what, code, _finish_stderr(tail, group, 0.5), tool) from None
        group.wait_exit(None)
        if group.status() != 0:
            group.signal(signal.SIGKILL)  # it failed: what it left running goes too
        if not wait_all(tails, time.monotonic() + OUTPUT_GRACE):
            group.signal(signal.SIGKILL)  # something it left running holds its output
            wait_all(tails, time.monotonic() + 0.5)
        code = group.reap()
    except BaseException:
        group.kill()
        raise
    finally:
        for t in tails:
            t.stop()
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it quit early, with data still buffered
    if code != 0:
        raise _failure(what, code, tail.text(), tool)
