"""One backup of a source in a child process, its log relayed, its end in the state file.

Both the agent's schedule and the manual trigger (``safehold agent run``) run a backup
this way: ``safehold backup --config FILE --source NAME --run-id ID --state-dir
STATE/runs`` as a child (:mod:`safehold.runs.child`, as the service's workers do), so the
run lock in ``STATE/runs/locks`` is shared by every run the agent and its manual trigger
start, and ``exit_if_in_progress`` is answered by the child itself (exit code 9).

Every log line the child writes is passed on with the run's ``backup_guid`` (its run id),
``source`` and ``plan`` added; the agent's own lines about the run carry the same fields
and the source's ``identifier`` (service-backup's ``service_identifier_executable``
output: the one the last run printed until this run's child says it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from safehold.agent.state import AgentState, RunResult, SourceState, process_start
from safehold.clock import Clock, utcnow
from safehold.errors import ExitCode
from safehold.runs.child import (
    KILL_GRACE,
    ChildResult,
    LogLine,
    backup_argv,
    retention_argv,
    run_child,
)
from safehold.runs.events import LogEvent, LogSink

__all__ = ["IN_PROGRESS_MESSAGE", "RunRequest", "run_backup", "run_retention"]

# service-backup's words for a run refused because another is going (its logs' message).
IN_PROGRESS_MESSAGE = (
    "Backup currently in progress, exiting. Another backup will not be able to start "
    "until this is completed."
)
# Outcomes of a run record that saved a snapshot.
SAVED = ("success", "partial")


@dataclass
class RunRequest:
    """One backup to run: which source, why, and where its locks and records go."""

    config_path: str
    source: str
    plan: str  # project/name
    state: AgentState
    clock: Clock
    sink: LogSink
    run_id: str
    trigger: str  # schedule, catch_up, retry, queued, manual
    attempt: int = 1
    slot: datetime | None = None
    timeout: float | None = None
    # The source's identifier: the file's, or the one its command printed last time,
    # until the child says it for this run.
    identifier: str = ""
    # Set when the agent (or Ctrl-C of the manual trigger) stops the run: a child stopped
    # before it could write its record (still starting) ended interrupted, not failed.
    stopped: bool = field(default=False, init=False)

    def fields(self) -> dict[str, Any]:
        """The fields every line about this run carries."""
        found: dict[str, Any] = {
            "run_id": self.run_id,
            "backup_guid": self.run_id,
            "source": self.source,
            "plan": self.plan,
        }
        if self.identifier:
            found["identifier"] = self.identifier
        return found

    def log(self, level: str, event: str, **more: Any) -> None:
        """One line about this run."""
        self.sink(LogEvent(utcnow(), level, event, {**self.fields(), **more}))

    def relay(self, line: LogLine) -> None:
        """Pass one of the child's lines on, with the run's fields."""
        ident = line.fields.get("identifier")
        if isinstance(ident, str) and ident:
            self.identifier = ident
        if line.fields:
            self.sink(
                LogEvent(utcnow(), line.level, line.message, {**self.fields(), **line.fields})
            )
        elif line.message.strip():
            # Plain text: the child's own error line ("safehold: error: ..."), or a tool's.
            self.log(line.level, "run.output", message=line.message)


def failed_phase(record: dict[str, Any]) -> str:
    """The first hook phase of a run record that failed, else ``backup`` (the run's own
    work): where an alert says the run failed, as the service's do."""
    for phase in record.get("phases") or []:
        if isinstance(phase, dict) and (
            phase.get("timed_out") or phase.get("interrupted")
            or phase.get("exit_code") not in (0, None)
        ):  # fmt: skip
            return str(phase.get("phase") or "backup")
    return "backup"


def outcome_of(result: ChildResult) -> tuple[str, int, str]:
    """The run's outcome, exit code and error from how its child ended."""
    record = result.record or {}
    outcome = str(record.get("outcome") or "")
    error = str(record.get("error") or "")
    if record.get("hint"):  # one text for the agent's state and alerts, as printed
        error += f"\n  hint: {record['hint']}"
    if result.killed:
        return "timeout", ExitCode.SOURCE, error or "killed by the agent after its time-out"
    if not outcome:
        tail = "; ".join(result.stderr_tail[-3:])
        message = f"the run's process ended with exit code {result.exit_code}"
        return (
            "failed",
            result.exit_code or ExitCode.FAILURE,
            f"{message}: {tail}" if tail else message,
        )
    code = record.get("exit_code")
    return outcome, int(code) if isinstance(code, int) else result.exit_code, error


async def run_backup(
    request: RunRequest,
    *,
    on_start: Callable[[asyncio.subprocess.Process], None] | None = None,
) -> RunResult:
    """Run one backup of ``request.source`` to its end and record it; its result (outcome
    ``in-progress`` when another run held the source's run lock and the source says
    ``exit_if_in_progress``: that one is not recorded as the source's last result)."""
    started = request.clock.now()
    began = request.clock.monotonic()  # durations in real seconds, whatever the clock
    me = {"pid": os.getpid(), "since": process_start(os.getpid()), "started": started.isoformat(),
          "trigger": request.trigger}  # fmt: skip

    def begin(entry: SourceState) -> None:
        entry.running[request.run_id] = me

    await asyncio.to_thread(request.state.update, request.source, begin)
    request.log(
        "info",
        "backup.started",
        trigger=request.trigger,
        attempt=request.attempt,
        slot=request.slot.isoformat() if request.slot else None,
    )
    argv = backup_argv(
        request.config_path,
        request.source,
        run_id=request.run_id,
        plan=request.plan,
        state_dir=request.state.folder / "runs",
    )
    limit = request.timeout + KILL_GRACE if request.timeout else None
    try:
        result = await run_child(argv, on_line=request.relay, limit=limit, on_start=on_start)
    except BaseException:
        await asyncio.shield(
            asyncio.to_thread(request.state.update, request.source, _drop(request))
        )
        raise
    outcome, code, error = outcome_of(result)
    record = result.record or {}
    if request.stopped and result.record is None:
        outcome, code, error = "interrupted", ExitCode.INTERRUPTED, "interrupted"
    ended = request.clock.now()
    run = RunResult(
        run_id=request.run_id,
        trigger=request.trigger,
        outcome=outcome,
        started=started,
        ended=ended,
        attempt=request.attempt,
        exit_code=code,
        error=error,
        snapshot=str(record.get("snapshot") or ""),
        slot=request.slot,
        phase=failed_phase(record) if outcome not in SAVED else "",
    )

    def end(entry: SourceState) -> None:
        entry.running.pop(request.run_id, None)
        if outcome == "in-progress":
            return  # not a run of the source: the one going will record its own end
        entry.last_result = run
        if outcome in SAVED:
            entry.last_success = run

    await asyncio.to_thread(request.state.update, request.source, end)
    duration = round(request.clock.monotonic() - began, 3)
    if outcome == "in-progress":
        request.log(
            "error",
            "backup.in_progress",
            message=IN_PROGRESS_MESSAGE,
            error="backup operation rejected",
            detail=error,
            exit_code=code,
        )
    elif outcome in SAVED:
        request.log(
            "info" if outcome == "success" else "warning",
            "backup.finished",
            outcome=outcome,
            exit_code=code,
            snapshot=run.snapshot or None,
            attempt=request.attempt,
            duration_s=duration,
        )
    else:
        # A skip (the pre-backup-check said no) and a stop are no failure of the backup.
        level = {"skipped": "info", "interrupted": "warning"}.get(outcome, "error")
        request.log(
            level,
            "backup.finished",
            message="Perform backup completed with error" if level == "error" else None,
            outcome=outcome,
            exit_code=code,
            error=error or None,
            reason=record.get("reason") or None,
            attempt=request.attempt,
            duration_s=duration,
        )
    return run


def _drop(request: RunRequest) -> Callable[[SourceState], None]:
    def drop(entry: SourceState) -> None:
        entry.running.pop(request.run_id, None)

    return drop


async def run_retention(
    request: RunRequest,
    *,
    on_start: Callable[[asyncio.subprocess.Process], None] | None = None,
) -> bool:
    """The source's ``retention:`` after a successful backup (``safehold forget --config
    FILE --source NAME``: no prune, so it never blocks the next backup); whether it
    succeeded. Logged with the backup's fields."""
    tail: list[str] = []

    def keep(line: LogLine) -> None:
        if line.message.strip():
            tail.append(line.message)
            del tail[:-5]

    argv = retention_argv(request.config_path, request.source)
    result = await run_child(argv, on_line=keep, limit=request.timeout, on_start=on_start)
    ok = result.exit_code == 0 and not result.killed
    record = result.record or {}
    if ok:
        request.log(
            "info",
            "retention.finished",
            removed=len(record.get("removed") or []),
        )
    else:
        request.log(
            "error",
            "retention.failed",
            exit_code=result.exit_code,
            error="; ".join(tail) or f"forget ended with exit code {result.exit_code}",
        )
    return ok
