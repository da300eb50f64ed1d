"""Lifecycle hooks: the scripts a run calls around reading or restoring a source.

The phases are the OSB backup agent's, in the order a run calls them::

    backup:  pre-backup-lock  pre-backup-check  backup  [read the source]
             backup-cleanup  post-backup-unlock
    restore: pre-restore-lock  [write the snapshot back]  restore
             restore-cleanup  post-restore-unlock

Each hook runs in a process group of its own, so a timeout (or Ctrl-C) kills everything
it started, not only the shell at its top. Its standard output and error are captured,
each bounded to the last :data:`OUTPUT_KEEP` bytes, so a chatty script cannot fill the
memory of the run or of its record. A hook may run as another user (``backup_user``):
safehold must then run as root, and the hook gets that user's groups, home and name.

The repository password never reaches a hook: ``SAFEHOLD_PASSWORD*`` and
``SAFEHOLD_REPOSITORY*`` variables (and any variable the caller names in ``hide_env``) are
removed from its environment.

Running the phases in order, and which of them always run, is the engine's job
(:mod:`safehold.engine.source_run`); this module runs one hook.
"""

from __future__ import annotations

import os
import pwd
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from safehold.errors import SourceError

__all__ = [
    "BACKUP_PHASES",
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
_HIDDEN_PREFIXES = ("SAFEHOLD_PASSWORD", "SAFEHOLD_REPOSITORY")
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a timed-out hook's group


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

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.interrupted

    def describe(self) -> str:
        """How it ended, for messages: ``exited with status 3``, ``timed out after 5 s``."""
        if self.error:
            return self.error
        if self.exit_code is not None and self.exit_code < 0:
            return f"was killed by signal {-self.exit_code}"
        return f"exited with status {self.exit_code}"

    def last_line(self) -> str:
        """The last line the hook printed (stderr first): the usual one-line reason."""
        for text in (self.stderr, self.stdout):
            lines = [line for line in text.strip().splitlines() if line.strip()]
            if lines:
                return lines[-1].strip()[:300]
        return ""

    def to_json(self) -> dict[str, Any]:
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
            "user": self.user,
        }


class _Tail:
    """Reads a pipe to its end on a thread, keeping only the last ``keep`` bytes."""

    def __init__(self, pipe: IO[bytes], keep: int) -> None:
        self._pipe = pipe
        self._keep = keep
        self._buf = bytearray()
        self.truncated = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="hook-output")
        self._thread.start()

    def _run(self) -> None:
        try:
            while piece := self._pipe.read(65536):
                self._buf += piece
                if len(self._buf) > 2 * self._keep:
                    del self._buf[: -self._keep]
                    self.truncated = True
        except (OSError, ValueError):
            pass  # the pipe was closed under us after a kill

    def text(self) -> str:
        # A grandchild that outlived a killed group may still hold the pipe open: do not
        # wait for it forever.
        self._thread.join(2)
        if len(self._buf) > self._keep:
            self.truncated = True
        return bytes(self._buf[-self._keep :]).decode(errors="replace")


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


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the hook's process group, then SIGKILL whatever is left after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass  # the group is already gone
        try:
            proc.wait(wait)
            # The leader is gone; kill stragglers in its group that ignored SIGTERM.
            if sig == signal.SIGTERM:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        except subprocess.TimeoutExpired:
            continue


def run_hook(
    spec: HookSpec,
    *,
    env: Mapping[str, str],
    timeout: float | None = None,
    default_user: str | None = None,
    hide_env: Sequence[str] = (),
    kill_grace: float = KILL_GRACE,
) -> HookResult:
    """Run ``spec`` to its end and report how it went; never raises for a failing hook.

    ``timeout`` caps the hook's own (a run's remaining time). ``env`` is added to the
    environment. A KeyboardInterrupt (or any exception, such as the run's overall
    timeout) while waiting kills the hook's process group and propagates.
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
            start_new_session=True,  # its own process group, killed as a whole
            **extra,
        )
    except OSError as exc:
        result.error = f"could not start {argv[0]!r}: {exc.strerror or exc}"
        result.duration_s = time.monotonic() - started
        return result
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Tail(proc.stdout, OUTPUT_KEEP), _Tail(proc.stderr, OUTPUT_KEEP)
    try:
        try:
            result.exit_code = proc.wait(limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc, kill_grace)
            result.timed_out = True
            result.exit_code = None
            result.error = f"timed out after {limit:g} s (its process group was killed)"
    except BaseException:
        # Ctrl-C or the run's own timeout, while waiting or even while killing.
        _kill_group(proc, 0.5)
        result.interrupted = True
        result.error = "interrupted (its process group was killed)"
        _finish(result, proc, out, err, started)
        raise
    _finish(result, proc, out, err, started)
    return result


def _finish(
    result: HookResult,
    proc: subprocess.Popen[bytes],
    out: _Tail,
    err: _Tail,
    started: float,
) -> None:
    result.stdout = out.text()
    result.stderr = err.text()
    result.output_truncated = out.truncated or err.truncated
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    result.duration_s = time.monotonic() - started
