"""``safehold agent run SOURCE``: the manual trigger (service-backup's ``manual-backup``).

It runs one backup of the source now, in the foreground, the way the agent runs a slot
(:mod:`.runner`: a child process, the same run locks, the same state file and log
lines), once: no retries, and the source's ``retention:`` after a success. Whether the
agent runs or not makes no difference, except that a run of the source may be going:
with ``exit_if_in_progress`` the manual run then exits at once (exit code 9, service-
backup's "Backup currently in progress" message); without, it waits for that run to end.
Ctrl-C or SIGTERM stop the child as the agent would (SIGINT, then SIGKILL of its group).

Alerts and pings as a scheduled run's (:mod:`.alerts`): the source's ``start`` ping as
the run starts, ``success`` or ``fail`` as it ends; a failure opens the source's incident
(told once: an incident open already, from the agent's runs or an earlier manual one,
sends nothing more), a success resolves it. They are queued in the state file's outbox
like the agent's, and this process sends its source's due deliveries itself, while the
backup and its retention run, before it exits: the agent need not run. A delivery that
fails stays in the outbox with its back-off, for the agent's sender (or the next manual
run) to try again; one the agent is sending already is left to it (the outbox's claims).
After Ctrl-C what is not sent yet is left in the outbox too.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

from safehold.agent.alerts import AgentAlerts
from safehold.agent.due import agent_plans
from safehold.agent.runner import SAVED, RunRequest, run_backup, run_retention
from safehold.agent.state import AgentState, RunResult
from safehold.clock import Clock, utcnow
from safehold.config import choose_source, load_config
from safehold.runs.child import stop_child
from safehold.runs.events import LogEvent, LogSink

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

    def log(level: str, event: str, **fields: object) -> None:
        sink(LogEvent(utcnow(), level, event, dict(fields)))

    alerts = AgentAlerts(request.state, log)
    alerts.configure(config)

    async def queue(what: str, change: Callable[..., object], *args: object) -> None:
        """Queue a ping or an incident's message; a trouble is logged, never raised (the
        backup's result is what the exit code says)."""
        try:
            await asyncio.to_thread(change, *args)
        except Exception as exc:
            log("error", "alert.queue_failed", source=chosen.name, run_id=request.run_id,
                what=what, error=str(exc))  # fmt: skip

    async def ping(event: str) -> None:
        await queue(f"ping {event}", alerts.ping, chosen.name, event, request.run_id,
                    clock.now())  # fmt: skip

    def deliver() -> asyncio.Future[None]:
        """Send the source's due deliveries in a thread, beside what runs meanwhile."""

        def send() -> None:
            try:
                alerts.deliver_due(clock.now(), stopped.is_set, source=chosen.name)
            except Exception as exc:  # the state file unreadable: the agent tries later
                log("error", "alert.deliver_failed", source=chosen.name, error=str(exc))

        return asyncio.ensure_future(asyncio.to_thread(send))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        await ping("start")
        sending = deliver()  # the start ping goes while the backup starts
        try:
            result = await run_backup(request, on_start=started)
        finally:
            await sending
        procs.clear()
        if result.outcome not in ("skipped", "in-progress"):  # as the agent's runs
            await ping("success" if result.outcome in SAVED else "fail")
        await queue("message", alerts.run_ended, chosen.name, request.plan, result, clock.now())
        sending = deliver()
        try:
            if result.outcome in SAVED and chosen.common.retention and not stopped.is_set():
                await run_retention(request, on_start=started)
        finally:
            await sending
        await asyncio.gather(*stoppers, return_exceptions=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return result
