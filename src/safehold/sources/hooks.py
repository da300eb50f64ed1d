"""Lifecycle hooks: the scripts a run calls around reading or restoring a source.

The phases are the OSB backup agent's, in the order a run calls them::

    backup:  pre-backup-lock  pre-backup-check  backup  [read the source]
             backup-cleanup  post-backup-unlock
    restore: pre-restore-lock  [write the snapshot back]  restore
             restore-cleanup  post-restore-unlock

Each hook runs in a process group (and session) of its own, so a timeout (or Ctrl-C)
kills everything it started, not only the shell at its top, and its time-out holds
whatever its descendants do: a process it leaves in the background holding its output
(``sleep 30 &``) gets :data:`OUTPUT_GRACE` seconds after the hook exited, then safehold
stops reading and ends the group (the result is ``lingering``). Its standard output and
error are captured, each bounded to the last :data:`OUTPUT_KEEP` bytes, so a chatty
script cannot fill the memory of the run or of its record; the last line it printed, the
two streams taken in the order they came, is the one-line reason of a failure.

A hook may run as another user (``backup_user``): safehold must then run as root, and the
hook gets that user's groups, home and name.

The repository password never reaches a hook: ``SAFEHOLD_PASSWORD*``,
``SAFEHOLD_REPOSITORY*`` and ``SAFEHOLD_SECRET_*`` variables (and any variable the caller
names in ``hide_env``) are removed from its environment.

Running the phases in order, and which of them always run, is the engine's job
(:mod:`safehold.runs.source_run`); this module runs one hook.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from safehold.errors import SourceError
from safehold.sources.process import OUTPUT_GRACE, ProcessGroup, Tail, wait_all

__all__ = [
    "BACKUP_PHASES",
    "OUTPUT_GRACE",
    "OUTPUT_KEEP",
    "PHASES",
    "RESTORE_PHASES",
    "HookError",
    "HookResult",
    "HookSpec",
    "run_hook",
]

BACKUP_PHASES = (
    "pre-backup-lock",
    "pre-backup-check",
    "backup",
    "backup-cleanup",
    "post-backup-unlock",
)
RESTORE_PHASES = ("pre-restore-lock", "restore", "restore-cleanup", "post-restore-unlock")
PHASES = BACKUP_PHASES + RESTORE_PHASES

OUTPUT_KEEP = 64 * 1024  # bytes of stdout and of stderr kept per hook (the last ones)
DEFAULT_TIMEOUT = 600.0  # seconds
# The repository's password and location (which may carry credentials) stay with safehold.
# SAFEHOLD_SECRET_N: a service plan's destination credentials (safehold.service.api_plans).
_HIDDEN_PREFIXES = ("SAFEHOLD_PASSWORD", "SAFEHOLD_REPOSITORY", "SAFEHOLD_SECRET_")
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a timed-out hook's group
_LINE_KEEP = 4096  # bytes of an unfinished line kept to find the last line printed


class HookError(SourceError):
    """A hook could not start, failed, or timed out."""


@dataclass(frozen=True, kw_only=True)
class HookSpec:
    """One configured hook.

    ``run`` is a command line split like a shell splits words (no pipes, no ``&&``; a
    script path is the usual form) or, with ``shell=True``, a ``/bin/sh -c`` script.
    """

    phase: str
    run: str
    timeout: float = DEFAULT_TIMEOUT
    shell: bool = False
    user: str | None = None

    def argv(self) -> list[str]:
        """The command to run: through ``/bin/sh -c`` with ``shell``, else split like a shell
        would, never interpreted."""
        if self.shell:
            return ["/bin/sh", "-c", self.run]
        return shlex.split(self.run)


@dataclass(kw_only=True)
class HookResult:
    """What one hook did; kept in the run record and logged."""

    phase: str
    command: str
    exit_code: int | None = None  # None: it never started, or was killed
    timed_out: bool = False
    interrupted: bool = False
    error: str = ""  # why it could not start, or how it ended when not by exit
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    user: str | None = None
    # It exited, but processes it started still held its output OUTPUT_GRACE s later:
    # safehold stopped reading and ended its process group.
    lingering: bool = False
    last_printed: str = ""  # its last line of output, stdout and stderr in arrival order
    argv: list[str] = field(default_factory=list)  # what was run ([] if it could not be)

    @property
    def ok(self) -> bool:
        """Whether it exited 0, in time and uninterrupted."""
        return self.exit_code == 0 and not self.timed_out and not self.interrupted

    def describe(self) -> str:
        """How it ended, for messages: ``exited with status 3``, ``timed out after 5 s``."""
        if self.error:
            return self.error
        if self.exit_code is not None and self.exit_code < 0:
            return f"was killed by signal {-self.exit_code}"
        return f"exited with status {self.exit_code}"

    def pasteable(self) -> str:
        """The command as a shell would take it (quoted: it can be pasted to try it)."""
        return shlex.join(self.argv) if self.argv else self.command

    def lingering_note(self, grace: float = OUTPUT_GRACE) -> str:
        """Why the run went on without the rest of its output (``""`` if it did not)."""
        if not self.lingering:
            return ""
        return (
            f"the {self.phase} hook {self.describe()}, but processes it started still held "
            f"its output {grace:g} s later: safehold stopped reading it and ended the hook's "
            "process group (redirect the output of a command left in the background: "
            "cmd >/dev/null 2>&1 &)"
        )

    def last_line(self) -> str:
        """The last line the hook printed, stdout and stderr in the order they came: the
        usual one-line reason."""
        if self.last_printed:
            return self.last_printed
        for text in (self.stderr, self.stdout):  # a result put together by hand
            lines = [line for line in text.strip().splitlines() if line.strip()]
            if lines:
                return lines[-1].strip()[:300]
        return ""

    def to_json(self) -> dict[str, Any]:
        """The result as the run record stores it."""
        return {
            "phase": self.phase,
            "command": self.command,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "interrupted": self.interrupted,
            "error": self.error,
            "duration_s": round(self.duration_s, 3),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "output_truncated": self.output_truncated,
            "lingering": self.lingering,
            "last_line": self.last_line(),
            "user": self.user,
        }


class _Lines:
    """The last line a hook printed, stdout and stderr taken together in the order their
    pieces arrived (each stream's lines are put together first, so a line written in two
    pieces is still one line)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._last: tuple[int, bytes] = (0, b"")
        self._partial: dict[str, tuple[int, bytes]] = {}

    def feeder(self, stream: str) -> Callable[[bytes], None]:
        def feed(piece: bytes) -> None:
            with self._lock:
                self._seq += 1
                _, before = self._partial.get(stream, (0, b""))
                *complete, rest = (before + piece).split(b"\n")
                for line in reversed(complete):
                    if line.strip():
                        self._last = (self._seq, line)
                        break
                self._seq += 1  # what is left of the piece came after its lines
                self._partial[stream] = (self._seq, rest[-_LINE_KEEP:])

        return feed

    def last(self) -> str:
        with self._lock:
            candidates = [self._last, *(p for p in self._partial.values() if p[1].strip())]
            _, line = max(candidates, key=lambda c: c[0])
        return line.decode(errors="replace").strip()[:300]


@dataclass(frozen=True)
class _Identity:
    user: str
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)
    home: str = "/"


def _identity(user: str) -> _Identity:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise HookError(
            f"backup_user {user!r} does not exist on this machine",
            hint="create the user, or fix backup_user in the configuration",
        ) from None
    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    return _Identity(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir or "/")


def _hook_env(
    env: Mapping[str, str], ident: _Identity | None, hide_env: Sequence[str]
) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_HIDDEN_PREFIXES) and k not in hide_env
    }
    base.update(env)
    if ident is not None:
        base.update(HOME=ident.home, USER=ident.user, LOGNAME=ident.user)
    return base


def run_hook(
    spec: HookSpec,
    *,
    env: Mapping[str, str],
    timeout: float | None = None,
    default_user: str | None = None,
    hide_env: Sequence[str] = (),
    kill_grace: float = KILL_GRACE,
    output_grace: float = OUTPUT_GRACE,
) -> HookResult:
    """Run ``spec`` to its end and report how it went; never raises for a failing hook.

    ``timeout`` caps the hook's own (a run's remaining time). ``env`` is added to the
    environment. A KeyboardInterrupt (or any exception, such as the run's overall
    timeout) while waiting kills the hook's process group and propagates.

    The hook's time-out holds whatever it started: at the deadline its process group is
    ended and its output no longer read. Once it exited, processes it left holding its
    output get ``output_grace`` seconds to let go; then reading stops, the group is ended
    and the result says so (``lingering``).
    """
    limit = spec.timeout if timeout is None else min(spec.timeout, max(0.0, timeout))
    user = spec.user or default_user
    result = HookResult(phase=spec.phase, command=spec.run, user=user)
    started = time.monotonic()
    try:
        argv = spec.argv()
    except ValueError as exc:
        result.error = f"its command line cannot be parsed: {exc}"
        return result
    if not argv:
        result.error = "its command line is empty"
        return result
    result.argv = argv
    try:
        ident = _identity(user) if user else None
    except HookError as exc:
        result.error = exc.message
        return result
    extra: dict[str, Any] = {}
    if ident is not None and ident.uid != os.geteuid():
        if os.geteuid() != 0:
            result.error = f"running hooks as {ident.user!r} needs safehold to run as root"
            return result
        extra = {"user": ident.uid, "group": ident.gid, "extra_groups": ident.groups}
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_hook_env(env, ident, hide_env),
            # Another user may not be allowed into our working folder.
            cwd="/" if extra else None,
            start_new_session=True,  # its own process group, ended as a whole
            **extra,
        )
    except OSError as exc:
        result.error = f"could not start {shlex.quote(argv[0])}: {exc.strerror or exc}"
        result.duration_s = time.monotonic() - started
        return result
    assert proc.stdout is not None and proc.stderr is not None
    group = ProcessGroup(proc)
    lines = _Lines()
    tails = [
        Tail(proc.stdout, OUTPUT_KEEP, on_data=lines.feeder("stdout"), name="hook-stdout"),
        Tail(proc.stderr, OUTPUT_KEEP, on_data=lines.feeder("stderr"), name="hook-stderr"),
    ]
    deadline = started + limit
    try:
        try:
            if not group.wait_exit(deadline - time.monotonic()):
                result.timed_out = True
                group.end(kill_grace)
                capped = " (the time left of the run's timeout)" if limit < spec.timeout else ""
                result.error = f"timed out after {limit:g} s{capped}; its process group was killed"
            elif not wait_all(tails, min(deadline, time.monotonic() + output_grace)):
                # It exited, but something it started (`sleep 30 &`) still holds its output.
                result.lingering = True
                result.exit_code = group.end(
                    kill_grace, gone=lambda t: wait_all(tails, time.monotonic() + t)
                )
            else:
                result.exit_code = group.reap()
        except BaseException:
            # Ctrl-C or the run's own timeout, while waiting or even while ending the group.
            group.end(0.5)
            result.interrupted = True
            result.error = "interrupted (its process group was killed)"
            raise
    finally:
        _finish(result, tails, lines, started)
    return result


def _finish(result: HookResult, tails: list[Tail], lines: _Lines, started: float) -> None:
    # Whatever already sits in a pipe is read; a holder outside the group (a daemon that
    # left its session) is not waited for.
    try:
        wait_all(tails, time.monotonic() + 0.2)
    finally:
        for tail in tails:
            tail.stop()
    out, err = tails
    result.stdout = out.text()
    result.stderr = err.text()
    result.output_truncated = out.truncated or err.truncated
    result.last_printed = lines.last()
    result.duration_s = time.monotonic() - started
