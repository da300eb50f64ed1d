"""The standalone agent's small state: one JSON file, no database.

The state folder (``--state-dir``; by default ``/var/lib/safehold/agent`` for root and
``$XDG_DATA_HOME/safehold/agent``, i.e. ``~/.local/share/safehold/agent``, for others)
holds::

    agent.json    what the agent knows of each source (below)
    agent.lock    flock()ed by the running agent: one agent per state folder
    state.lock    flock()ed around each change of agent.json
    runs/         the run locks and run records of the backups it starts
                  (safehold.runs.state: ``backup --state-dir STATE/runs``)

``agent.json`` keeps, per source: ``since`` (slots at or before it have been decided:
after a restart the agent goes on from there, so a downtime is caught up once and no slot
is decided twice), the last result, the last success, and the run going now. The agent
and ``safehold agent run`` (the manual trigger) both change it, each change a
read-modify-write under ``state.lock``, written atomically (temp file, fsync, rename,
fsync of the folder): a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from safehold.errors import ExitCode, SafeholdError, UsageError

__all__ = [
    "STATE_FILE",
    "AgentAlreadyRunning",
    "AgentState",
    "RunResult",
    "SourceState",
    "agent_pid",
    "default_agent_dir",
    "hold_agent_lock",
    "is_live",
    "process_start",
    "this_process",
]

STATE_FILE = "agent.json"
_VERSION = 1


class AgentAlreadyRunning(SafeholdError):
    """Another agent holds the state folder's ``agent.lock``."""

    exit_code = ExitCode.USAGE  # two agents cannot share one state folder


def default_agent_dir() -> Path:
    """``/var/lib/safehold/agent`` for root, else ``$XDG_DATA_HOME/safehold/agent``.

    The same rule as the service's state folder (``service/cluster.py``), one level down:
    the agent may not import the service, and the two can share a machine.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/safehold/agent")
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "safehold" / "agent"


def _time(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass
class RunResult:
    """How one run of a source ended, as ``agent.json`` keeps it."""

    run_id: str
    trigger: str  # schedule, catch_up, retry, queued, manual
    outcome: str  # the run record's: success, partial, failed, timeout, interrupted...
    started: datetime
    ended: datetime | None = None
    attempt: int = 1
    exit_code: int | None = None
    error: str = ""
    snapshot: str = ""
    slot: datetime | None = None  # the slot it ran for (None: manual)
    phase: str = ""  # where a failed run failed: its first failed hook, else "backup"

    def to_json(self) -> dict[str, Any]:
        """The result as the file holds it."""
        return {
            "run_id": self.run_id,
            "trigger": self.trigger,
            "outcome": self.outcome,
            "started": _iso(self.started),
            "ended": _iso(self.ended),
            "attempt": self.attempt,
            "exit_code": self.exit_code,
            "error": self.error,
            "snapshot": self.snapshot or None,
            "slot": _iso(self.slot),
            "phase": self.phase or None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        """A result read back from the file."""
        started = _time(data.get("started"))
        assert started is not None, "a run result without its start"
        return cls(
            run_id=str(data.get("run_id", "")),
            trigger=str(data.get("trigger", "")),
            outcome=str(data.get("outcome", "")),
            started=started,
            ended=_time(data.get("ended")),
            attempt=int(data.get("attempt") or 1),
            exit_code=data.get("exit_code"),
            error=str(data.get("error") or ""),
            snapshot=str(data.get("snapshot") or ""),
            slot=_time(data.get("slot")),
            phase=str(data.get("phase") or ""),
        )


@dataclass
class SourceState:
    """What ``agent.json`` says of one source."""

    since: datetime | None = None  # every slot at or before it has been decided
    last_result: RunResult | None = None
    last_success: RunResult | None = None
    # The runs going now, by run id: their process, start and trigger. Usually one; the
    # manual trigger may start one beside the agent's (it then waits for the run lock, or
    # exits as exit_if_in_progress says). An entry whose process is gone is stale.
    running: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The open incident (the source's runs fail; told once, cleared by a success): its
    # kind, run id, phase, error, hint and opening time (agent/alerts.py). None: healthy.
    incident: dict[str, Any] | None = None
    # Messages and pings not sent yet, or failed for good (kept to be seen, not dropped):
    # what, to whom, attempts, next try, last error (secrets masked).
    outbox: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The source's entry as the file holds it."""
        return {
            "since": _iso(self.since),
            "last_result": self.last_result.to_json() if self.last_result else None,
            "last_success": self.last_success.to_json() if self.last_success else None,
            "running": self.running,
            "incident": self.incident,
            "outbox": self.outbox,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceState:
        """An entry read back from the file."""
        result, success = data.get("last_result"), data.get("last_success")
        running, incident, outbox = data.get("running"), data.get("incident"), data.get("outbox")
        return cls(
            since=_time(data.get("since")),
            last_result=RunResult.from_json(result) if isinstance(result, dict) else None,
            last_success=RunResult.from_json(success) if isinstance(success, dict) else None,
            running={str(k): v for k, v in (running or {}).items() if isinstance(v, dict)}
            if isinstance(running, dict)
            else {},
            incident=incident if isinstance(incident, dict) else None,
            outbox=[o for o in outbox if isinstance(o, dict)] if isinstance(outbox, list) else [],
        )

    @property
    def last_start(self) -> datetime | None:
        """The start of the run going now, else of the last success: what ``min_interval``
        counts from (a failed run does not count: the next slot may try again)."""
        going = [_time(run.get("started")) for run in self.live_runs().values()]
        started = [moment for moment in going if moment is not None]
        if started:
            return max(started)
        return self.last_success.started if self.last_success else None

    def live_runs(self) -> dict[str, dict[str, Any]]:
        """The runs going now whose process is still alive (a killed agent leaves its
        entry behind; its pid is gone, or is another process's by now)."""
        return {k: v for k, v in self.running.items() if _alive(v.get("pid"), v.get("since"))}


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/PID/stat``'s
    22nd field), or None if there is no such process: with the pid it names one process,
    even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (2nd field) may hold spaces and parentheses: count after its end.
    return stat[stat.rfind(")") + 2 :].split()[19]


def this_process() -> dict[str, Any]:
    """This process as the state file names it: its pid and start (a pid alone may be
    another process's by the time someone reads it)."""
    pid = os.getpid()
    return {"pid": pid, "since": process_start(pid)}


def is_live(holder: object) -> bool:
    """Whether ``holder`` (a :func:`this_process` dict) names a process still running."""
    return isinstance(holder, dict) and _alive(holder.get("pid"), holder.get("since"))


def _alive(pid: object, since: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    started = process_start(pid)
    return started is not None and (since is None or started == since)


@dataclass(frozen=True)
class AgentState:
    """``agent.json`` in ``folder``: read it, or change one source's entry atomically.

    It keeps nothing in memory: every read is the file as it is now, so that the agent's
    threads and the manual trigger's process each see the others' changes.
    """

    folder: Path

    @property
    def path(self) -> Path:
        """The state file's path."""
        return self.folder / STATE_FILE

    def load(self) -> dict[str, SourceState]:
        """Every source's entry (an empty dict when the file does not exist yet)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
            version = data.get("version")
            entries = data["sources"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(
                f"the agent's state file {self.path} cannot be read: {exc}",
                hint="move it aside: the agent then starts afresh (its sources' slots are "
                "decided from now on, with no catch-up)",
            ) from None
        if version != _VERSION:
            raise UsageError(
                f"the agent's state file {self.path} has version {version!r}, not {_VERSION}",
                hint="it was written by another version of safehold; run that one, or move "
                "the file aside",
            )
        return {
            str(name): SourceState.from_json(entry)
            for name, entry in entries.items()
            if isinstance(entry, dict)
        }

    def update(self, name: str, change: Callable[[SourceState], None]) -> SourceState:
        """Apply ``change`` to source ``name``'s entry as the file has it now, and write
        the file; the entry after the change. Other processes' changes are kept: the file
        is read again under the lock."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _flock(self.folder / "state.lock"):
            sources = self.load()
            entry = sources.setdefault(name, SourceState())
            change(entry)
            self._write(sources)
        return entry

    def _write(self, sources: dict[str, SourceState]) -> None:
        data = {
            "version": _VERSION,
            "sources": {name: entry.to_json() for name, entry in sorted(sources.items())},
        }
        tmp = self.folder / f".{STATE_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # The rename itself is durable only once the folder is.
        dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@contextmanager
def hold_agent_lock(folder: Path) -> Iterator[None]:
    """Be the one agent of ``folder`` while the body runs; :class:`AgentAlreadyRunning`
    if another holds it. An ``flock``: the kernel drops it when the agent dies."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise AgentAlreadyRunning(
                f"an agent already runs with the state folder {folder} (pid {holder})",
                hint="stop it first, or give this one another --state-dir",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def agent_pid(folder: Path) -> int | None:
    """The pid of the agent running with ``folder``, or None when none holds its lock."""
    path = folder / "agent.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        return None
    finally:
        os.close(fd)
