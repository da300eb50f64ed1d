"""Running one job in a child process, as the command line would, and reading what it says.

Used by the service's workers (``safehold serve``) and by the standalone agent
(``safehold agent --config FILE``), which both run each backup this way.

Each job runs as ``python -m safehold --log-format json --json backup --config FILE
--source NAME --run-id ID --plan KEY``: the engine's process-wide settings (the switch
interval, the allocator, signal handlers), a native call that hangs, and the memory of a
big backup stay inside the child, and killing it on a time-out kills its whole process
group (hooks included) without touching the service. The child writes one JSON log event
a line on standard error, which :func:`run_child` hands to ``on_line`` as it arrives, and
its run record as JSON on standard output when it ends.

The run's own ``timeout`` is enforced by the child, which then still runs the unlock and
cleanup hooks and records the run as timed out. The parent's limit is a backstop for a
child that does not end: ``timeout`` plus :data:`KILL_GRACE`, then SIGINT to the child
(as Ctrl-C: it stops its hooks and runs the unlock hooks), then SIGKILL to its group.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KILL_GRACE",
    "TERM_WAIT",
    "ChildResult",
    "LogLine",
    "backup_argv",
    "drill_argv",
    "forget_argv",
    "literal_pattern",
    "parse_line",
    "prune_argv",
    "restore_argv",
    "retention_argv",
    "run_child",
    "stop_child",
    "verify_argv",
]

KILL_GRACE = 120.0  # the parent's backstop beyond the run's own time-out
TERM_WAIT = 8.0  # between SIGINT to the child and SIGKILL to its process group
_STDERR_KEEP = 40  # lines of unparsed standard error kept for the error message


@dataclass(frozen=True)
class LogLine:
    """One line the child wrote: a parsed JSON event, or plain text at ``info``."""

    level: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChildResult:
    """How the child ended: its exit code, its run record (None if it printed none),
    whether the parent had to kill it, and the end of its unparsed standard error."""

    exit_code: int
    record: dict[str, Any] | None
    killed: bool = False
    stderr_tail: list[str] = field(default_factory=list)


def backup_argv(
    config_path: str, source: str, *, run_id: str, plan: str, state_dir: Path
) -> list[str]:
    """The child's command line for a backup of one configured source."""
    return [
        sys.executable,
        "-m",
        "safehold",
        "--log-format",
        "json",
        "--json",
        "backup",
        "--config",
        config_path,
        "--source",
        source,
        "--run-id",
        run_id,
        "--plan",
        plan,
        "--state-dir",
        str(state_dir),
    ]


def retention_argv(config_path: str, source: str, *, held: Sequence[str] = ()) -> list[str]:
    """The child's command line for a plan's retention (``forget``, no prune); ``held``:
    the snapshots it must keep whatever its rules say (held restore points)."""
    argv = [
        sys.executable,
        "-m",
        "safehold",
        "--json",
        "forget",
        "--config",
        config_path,
        "--source",
        source,
    ]
    for snapshot in held:
        argv += ["--keep-id", snapshot]
    return argv


def forget_argv(config_path: str, snapshots: Sequence[str], *, held: Sequence[str]) -> list[str]:
    """The child's command line that removes the named ``snapshots`` (a restore point
    deleted through the service); ``held`` keeps forget refusing a held one."""
    argv = [sys.executable, "-m", "safehold", "--json", "forget", "--config", config_path]
    for snapshot in held:
        argv += ["--keep-id", snapshot]
    return [*argv, *snapshots]


def restore_argv(
    config_path: str,
    source: str,
    *,
    snapshot: str,
    target: str | None,
    replace: bool,
    paths: Sequence[str] = (),
) -> list[str]:
    """The child's command line for a restore of one configured source: ``snapshot``
    through the source's restore path and hooks, into ``target`` (None: the source's own
    place, e.g. its database); ``paths``: only these files or folders of the snapshot
    (a folder source; taken literally, not as patterns)."""
    argv = [
        sys.executable,
        "-m",
        "safehold",
        "--log-format",
        "json",
        "--json",
        "restore",
        snapshot,
        "--config",
        config_path,
        "--source",
        source,
    ]
    if target:
        argv += ["--target", target]
    if replace:
        argv.append("--replace")
    for path in paths:
        argv += ["--include", literal_pattern(path)]
    return argv


def literal_pattern(path: str) -> str:
    """``path`` as a restore pattern that matches it (and what is below it) alone: each
    glob character escaped with a backslash, as policy/patterns.py reads them."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in path)


def drill_argv(
    config_path: str, source: str, *, run_id: str, snapshot: str | None, state_dir: Path
) -> list[str]:
    """The child's command line for a restore drill of one configured source (``snapshot``:
    the one the service chose; None: the drill's own choice). The service records it."""
    argv = [
        sys.executable,
        "-m",
        "safehold",
        "--log-format",
        "json",
        "--json",
        "drill",
        source,
        "--config",
        config_path,
        "--run-id",
        run_id,
        "--state-dir",
        str(state_dir),
    ]
    if snapshot:
        argv += ["--snapshot", snapshot]
    return argv


def prune_argv(config_path: str, *, max_unused: str | None = None) -> list[str]:
    """The child's command line for a prune of the file's repository."""
    argv = [sys.executable, "-m", "safehold", "--json", "prune", "--config", config_path]
    if max_unused is not None:
        argv += ["--max-unused", max_unused]
    return argv


def verify_argv(config_path: str, *, state_file: str) -> list[str]:
    """The child's command line for a verification slice of the file's repository: the
    rotation and the slice's timing are in ``state_file`` (the worker's, from the catalog)."""
    return [
        sys.executable,
        "-m",
        "safehold",
        "--log-format",
        "json",
        "--json",
        "verify",
        "--config",
        config_path,
        "--slice-state",
        state_file,
    ]


def parse_line(raw: str) -> LogLine:
    """A line of the child's standard error as a :class:`LogLine`."""
    text = raw.rstrip("\n")
    if text.startswith("{"):
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if isinstance(event, dict):
            level = str(event.pop("level", "info"))
            name = str(event.pop("event", ""))
            event.pop("ts", None)
            rest = {k: v for k, v in event.items() if k not in ("run_id", "backup_guid")}
            return LogLine(level, name, rest)
    return LogLine("info", text)


async def run_child(
    argv: Sequence[str],
    *,
    on_line: Callable[[LogLine], None],
    limit: float | None,
    env: Mapping[str, str] | None = None,
    on_start: Callable[[asyncio.subprocess.Process], None] | None = None,
) -> ChildResult:
    """Run ``argv`` in a new session; kill its group after ``limit`` seconds, if given.
    ``env`` is added to the service's own environment (an API plan's secrets: in the
    child's environment only, never on its command line or a disk). ``on_start`` gets
    the process as soon as it runs (the worker keeps it to fence)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: killed whole, hooks included
        preexec_fn=_die_with_parent,
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.stdout is not None and proc.stderr is not None
    if on_start is not None:
        on_start(proc)
    tail: list[str] = []

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = parse_line(raw.decode(errors="replace"))
            if not line.fields and not line.message.startswith("{"):
                tail.append(line.message)
                del tail[:-_STDERR_KEEP]
            on_line(line)

    readers = asyncio.gather(proc.stdout.read(), read_stderr())
    killed = False
    try:
        out, _ = await asyncio.wait_for(asyncio.shield(readers), timeout=limit)
    except TimeoutError:
        killed = True
        await stop_child(proc)
        out, _ = await readers
    except asyncio.CancelledError:
        # The service is stopping hard (a second signal): take the child down with it.
        await stop_child(proc)
        raise
    code = await proc.wait()
    return ChildResult(code, _record(out), killed, tail)


async def stop_child(proc: asyncio.subprocess.Process, grace: float | None = None) -> None:
    """End a child as Ctrl-C would (SIGINT: it stops its hooks and tools, runs the unlock
    and cleanup hooks and records the run as interrupted), then, after ``grace`` seconds,
    SIGKILL its process group (``grace``: :data:`TERM_WAIT` when not given)."""
    try:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), timeout=TERM_WAIT if grace is None else grace)
        return
    except ProcessLookupError:
        return
    except TimeoutError:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    await proc.wait()


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: dlopen is not safe after
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the service dies (``kill -9`` of a worker
    must not leave its backup running beside the retry another worker starts)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _record(out: bytes) -> dict[str, Any] | None:
    text = out.decode(errors="replace").strip()
    if not text:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None
