"""``safehold agent run SOURCE``: the manual trigger (service-backup's ``manual-backup``).

It runs one backup of the source now, in the foreground, the way the agent runs a slot
(:mod:`.runner`: a child process, the same run locks, the same state file and log
lines), once: no retries, and the source's ``retention:`` after a success. Whether the
agent runs or not makes no difference, except that a run of the source may be going:
with ``exit_if_in_progress`` the manual run then exits at once (exit code 9, service-
backup's "Backup currently in progress" message); without, it waits for that run to end.
Ctrl-C or SIGTERM stop the child as the agent would (SIGINT, then SIGKILL of its group).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

from safehold.agent.due import agent_plans
from safehold.agent.runner import SAVED, RunRequest, run_backup, run_retention
from safehold.agent.state import AgentState, RunResult
from safehold.clock import Clock
from safehold.config import choose_source, load_config
from safehold.runs.child import stop_child
from safehold.runs.events import LogSink

__all__ = ["run_now"]


async def run_now(
    config_path: str,
    source: str,
    *,
    state_dir: Path,
    clock: Clock,
    sink: LogSink,
    stop_grace: float = 10.0,
) -> RunResult:
    """One backup of ``source`` now; its result (the caller turns it into an exit code)."""
    config = load_config(config_path)
    chosen = choose_source(config, source)
    plan = agent_plans(config).get(chosen.name)
    request = RunRequest(
        config_path=config_path,
        source=chosen.name,
        plan=plan.key if plan else f"{chosen.common.project}/{chosen.name}",
        state=AgentState(state_dir),
        clock=clock,
        sink=sink,
        run_id=str(uuid.uuid4()),
        trigger="manual",
        timeout=chosen.common.timeout,
        identifier=chosen.common.identifier or "",
    )
    procs: list[asyncio.subprocess.Process] = []
    stopped = asyncio.Event()
    stoppers: list[asyncio.Task[None]] = []

    def interrupt() -> None:
        stopped.set()
        request.stopped = True
        stoppers.extend(asyncio.ensure_future(stop_child(p, stop_grace)) for p in procs)

    def started(proc: asyncio.subprocess.Process) -> None:
        procs.append(proc)
        if stopped.is_set():  # interrupted while it was being started
            stoppers.append(asyncio.ensure_future(stop_child(proc, stop_grace)))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        result = await run_backup(request, on_start=started)
        procs.clear()
        if result.outcome in SAVED and chosen.common.retention and not stopped.is_set():
            await run_retention(request, on_start=started)
        await asyncio.gather(*stoppers, return_exceptions=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return result
