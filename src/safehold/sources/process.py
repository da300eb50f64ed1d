"""Running dump and restore tools: their output streamed, their failures made loud.

:func:`command_stream` starts a producer (``pg_dump``, ``redis-cli --rdb -``) and yields its
standard output; :func:`command_sink` starts a consumer (``pg_restore``, ``mariadb``) and
yields its standard input. Both keep the last part of the tool's standard error (bounded,
read by a thread so a chatty tool never blocks on a full pipe) and, on exit, raise
:class:`SourceError` with it when the tool failed, so a failed dump never looks complete.

Secrets go through ``env`` (``PGPASSWORD``, ``MYSQL_PWD``, ``REDISCLI_AUTH``) or files,
never through ``argv``, which ``ps`` shows to every user of the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, BinaryIO

from safehold.errors import SourceError

__all__ = ["ToolMissing", "command_sink", "command_stream", "find_tool"]

_STDERR_KEEP = 8192


class ToolMissing(SourceError):
    """A dump or restore tool is not installed."""


def find_tool(name: str, package: str, *, path: str | None = None) -> str:
    """The full path of ``name``, or a ToolMissing error naming the package to install."""
    found = shutil.which(name, path=path)
    if found is None:
        raise ToolMissing(
            f"{name!r} was not found on PATH",
            hint=f"install it (Debian/Ubuntu: apt-get install {package}) or set the tool's "
            "path in the source's configuration",
        )
    return found


class _Tail:
    """Reads a pipe to its end, keeping only the last bytes (a tool's error message)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self._buf = bytearray()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stderr")
        self._thread.start()

    def _run(self) -> None:
        while piece := self._pipe.read(4096):
            self._buf += piece
            if len(self._buf) > 2 * _STDERR_KEEP:
                del self._buf[:-_STDERR_KEEP]

    def text(self) -> str:
        self._thread.join(5)
        tail = bytes(self._buf[-_STDERR_KEEP:]).decode(errors="replace").strip()
        return tail


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
        )
    except FileNotFoundError as exc:
        raise ToolMissing(
            f"{what}: could not start {argv[0]!r}: no such file or command",
            hint="install it or fix its path",
        ) from exc
    except OSError as exc:
        raise SourceError(f"{what}: could not start {argv[0]!r}: {exc.strerror}") from exc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _failure(what: str, code: int, tail: _Tail, tool: str) -> SourceError:
    detail = tail.text()
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    msg = f"{what}: {tool} {how}"
    if detail:
        msg += f": {detail.splitlines()[-1] if len(detail) > 300 else detail}"
    return SourceError(msg)


@contextmanager
def command_stream(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Iterator[BinaryIO]:
    """Run ``argv`` and yield its standard output; raise SourceError if it fails.

    ``what`` names the job in messages (``"dump of database 'shop'"``). If the body raises,
    the tool is killed and the body's exception propagates.
    """
    proc = _start(argv, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=cwd, what=what)
    assert proc.stdout is not None and proc.stderr is not None
    tail = _Tail(proc.stderr)
    try:
        yield proc.stdout  # type: ignore[misc]
    except BaseException:
        _stop(proc)
        proc.stdout.close()
        raise
    # The consumer stopped reading: anything left unread means the stream was not taken
    # whole, which the engine never does; drain so the tool is not killed by SIGPIPE.
    leftover = proc.stdout.read(1)
    proc.stdout.close()
    code = proc.wait()
    if code != 0:
        raise _failure(what, code, tail, os.path.basename(argv[0]))
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
    tail = _Tail(proc.stderr)
    out_tail = _Tail(proc.stdout) if proc.stdout is not None else None
    try:
        yield proc.stdin  # type: ignore[misc]
        proc.stdin.close()
    except BrokenPipeError:
        # The tool quit early; its exit status and message say why.
        code = proc.wait()
        raise _failure(what, code if code else 1, tail, os.path.basename(argv[0])) from None
    except BaseException:
        _stop(proc)
        raise
    code = proc.wait()
    if out_tail is not None:
        out_tail.text()
    if code != 0:
        raise _failure(what, code, tail, os.path.basename(argv[0]))
