"""A machine's local run state: per-source run locks and one record file per run.

The state folder is ``$SAFEHOLD_STATE_DIR``, else ``$XDG_STATE_HOME/safehold``, else
``~/.local/state/safehold``; it is made private (0700) because run records keep hook
output. Layout::

    locks/<source>.lock          flock()ed while a run of <source> is under way
    runs/<source>/<run_id>.json  one record per run (written at start, rewritten at end)

The lock is an ``flock`` on an open file: the kernel drops it when the process dies, so
a killed run never leaves a stale lock behind. A later version keeps records in the
service's catalog; :class:`RunRecord` is small so that move stays easy.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from safehold.errors import ExitCode, SafeholdError
from safehold.ids import NO_SNAPSHOT, SnapshotId

__all__ = ["RunInProgress", "RunRecord", "default_state_dir", "run_lock", "save_record"]


class RunInProgress(SafeholdError):
    """Another run of the same source holds its run lock (exit_if_in_progress)."""

    exit_code = ExitCode.IN_PROGRESS
    http_status = 409


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where run locks and run records live: ``SAFEHOLD_STATE_DIR``, else
    ``$XDG_STATE_HOME/safehold``, else ``~/.local/state/safehold``."""
    env = os.environ if env is None else env
    if env.get("SAFEHOLD_STATE_DIR"):
        return Path(env["SAFEHOLD_STATE_DIR"])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "safehold"
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".local" / "state" / "safehold"


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@dataclass(kw_only=True)
class RunRecord:
    """What one run of a source did (the JSON file in ``runs/``)."""

    run_id: str
    operation: str  # "backup" or "restore"
    source: str
    source_kind: str
    plan: str
    started: datetime
    identifier: str = ""
    host: str = ""
    finished: datetime | None = None
    # running, success, partial, skipped, in-progress, failed, timeout, interrupted
    outcome: str = "running"
    exit_code: int | None = None
    error: str = ""
    hint: str = ""  # the error's next step, apart from it (the service shows it apart)
    # The end of the standard error of the tool whose failure ``error`` reports (its last
    # 8 KiB; the message shows only its last lines).
    error_output: str = ""
    reason: str = ""  # why a run was skipped
    snapshot: SnapshotId = NO_SNAPSHOT  # saved (backup) or restored (restore)
    # The saved snapshot's chain: {"id", "seq" (0: the chain's full), "isolated"}.
    chain: dict[str, Any] = field(default_factory=dict)
    target: str = ""  # restore target
    summary: dict[str, Any] = field(default_factory=dict)
    phases: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    destinations: list[dict[str, str]] = field(default_factory=list)  # one per copy made

    def error_text(self) -> str:
        """The error as a command prints it: its message, then its hint."""
        return f"{self.error}\n  hint: {self.hint}" if self.hint else self.error

    def to_json(self) -> dict[str, Any]:
        """The record as its JSON file holds it."""
        return {
            "run_id": self.run_id,
            "operation": self.operation,
            "source": self.source,
            "source_kind": self.source_kind,
            "plan": self.plan,
            "identifier": self.identifier,
            "host": self.host,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "duration_s": (
                round((self.finished - self.started).total_seconds(), 3) if self.finished else None
            ),
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "error": self.error,
            "hint": self.hint or None,
            "error_output": self.error_output,
            "reason": self.reason,
            "snapshot": self.snapshot or None,
            "chain": self.chain or None,
            "target": self.target or None,
            "summary": self.summary,
            "phases": self.phases,
            "warnings": self.warnings,
            "destinations": self.destinations,
        }


def save_record(state_dir: Path, record: RunRecord) -> Path:
    """Write ``record`` atomically (a reader sees the old or the new file, never half)."""
    folder = _private_dir(state_dir / "runs" / record.source)
    path = folder / f"{record.run_id}.json"
    tmp = folder / f".{record.run_id}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record.to_json(), f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path


@contextmanager
def run_lock(
    state_dir: Path, source: str, *, run_id: str, wait: bool, poll: float = 0.2
) -> Iterator[None]:
    """Hold ``source``'s run lock. ``wait=False`` raises RunInProgress at once when it is
    taken; ``wait=True`` waits for it (the caller's overall timeout bounds the wait)."""
    folder = _private_dir(state_dir / "locks")
    fd = os.open(folder / f"{source}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise RunInProgress(
                        f"a run of source {source!r} is already in progress "
                        f"({_holder(fd)}); exiting (exit_if_in_progress is set)",
                        hint="another run can start once this one has finished",
                    ) from None
                # Polling, not a blocking flock: a blocked flock would not notice the
                # overall timeout's signal until the lock came free.
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "run_id": run_id}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info.get('pid')}, run {info.get('run_id')}"
    except (OSError, ValueError):
        return "holder unknown"
