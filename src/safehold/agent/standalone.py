"""``safehold agent --config FILE``: each scheduled source backed up on its slots, alone.

One process on one machine, with no database (Cloud Foundry service-backup's way). Every
``tick`` it looks at the sources whose next slot has come and asks the service's slot
rule (:mod:`.due`) what to do with the slots since the last one decided: run one, skip
it (paused, overlap, ``min_interval``: logged with the reason), or count it missed
(logged once per look, with one catch-up run after a downtime). Each run is a child
process (:mod:`.runner`); a source has one run going at a time, and with ``on_overlap:
queue`` (the default unless ``exit_if_in_progress``) one more waits behind it.

A failed or timed-out run is tried again after ``retry_delay`` seconds (doubled each
time, real seconds) up to ``retries`` times; a successful one is followed by the source's
``retention:`` (``forget``, no prune). The newest slot decided and each run's end are in
the state file (:mod:`.state`) before the agent goes on, so a restart neither runs a slot
twice nor forgets a downtime.

SIGTERM and SIGINT stop it: no new run starts, each running child gets SIGINT (as Ctrl-C:
it stops its hooks, runs the unlock and cleanup hooks, records itself interrupted) and is
killed with its process group after ``stop_grace`` seconds. SIGHUP reads the file again:
new sources start, removed ones finish their run and stop, changed schedules apply from
the next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from safehold.agent.alerts import AgentAlerts
from safehold.agent.due import AgentPlan, agent_plans, due_slots
from safehold.agent.runner import (
    IN_PROGRESS_MESSAGE,
    SAVED,
    RunRequest,
    run_backup,
    run_retention,
)
from safehold.agent.state import AgentState, RunResult, SourceState, hold_agent_lock
from safehold.clock import SYSTEM_CLOCK, Clock, utcnow
from safehold.config import Config, load_config
from safehold.policy.slots import SlotDecision, SlotState
from safehold.runs.child import stop_child
from safehold.runs.events import LogEvent, LogSink

__all__ = ["AgentOptions", "StandaloneAgent", "run_agent"]

DELIVER_EVERY = 1.0  # real seconds between looks at the outbox (retries come due)

# Failed runs worth another attempt; an interrupted run (the agent stopping), a skipped one
# (its pre-backup-check said no) or one refused by exit_if_in_progress are not failures.
_RETRIED = ("failed", "timeout")


@dataclass
class AgentOptions:
    """How ``safehold agent`` was asked to run."""

    config_path: str  # absolute: the children read it from their own working folder
    state_dir: Path
    tick_interval: float = 1.0
    stop_grace: float = 10.0  # SIGINT to running children, SIGKILL this much later
    clock: Clock = field(default=SYSTEM_CLOCK)


@dataclass
class _Lane:
    """One source's runs in this process: the one going, and those waiting behind it."""

    plan: AgentPlan
    active: bool = True  # False: removed from the file, finishing its run
    next_slot: datetime | None = None
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    request: RunRequest | None = None  # the run going, or the last one
    retry_pending: bool = False
    identifier: str = ""  # the source's identifier, as its last run said it
    waiting: deque[tuple[str, datetime | None]] = field(default_factory=deque)


class StandaloneAgent:
    """The running agent: its sources, their runs and the state file."""

    def __init__(self, options: AgentOptions, config: Config, sink: LogSink) -> None:
        self.options = options
        self.sink = sink
        self.state = AgentState(options.state_dir)
        self.lanes: dict[str, _Lane] = {}
        self.stop = asyncio.Event()
        self.reload_requested = False
        self._stopping: set[asyncio.Future[None]] = set()
        self.alerts = AgentAlerts(self.state, self.log)
        self._wake = asyncio.Event()  # a delivery was queued: send it now
        self._closing = False  # the agent is stopping: the sender ends
        self.apply(config)

    def log(self, level: str, event: str, **fields: object) -> None:
        """One line of the agent's own (not about one run)."""
        self.sink(LogEvent(utcnow(), level, event, dict(fields)))

    # --- the file's sources ---------------------------------------------------------

    def apply(self, config: Config) -> None:
        """Take the scheduled sources of ``config`` (at start and on reload)."""
        plans = agent_plans(config)
        self.alerts.configure(config)
        now = self.options.clock.now()
        for name, old in self.lanes.items():
            if name not in plans:
                old.active = False
                old.waiting.clear()
        for name, plan in plans.items():
            lane = self.lanes.get(name)
            if lane is None:
                self.lanes[name] = _Lane(plan)
            else:
                lane.plan, lane.active, lane.next_slot = plan, True, None
            # A source seen for the first time has its slots decided from now on: the
            # past before it was configured is not a downtime to catch up.
            self.state.update(name, lambda entry: _first_seen(entry, now))
        self._forget_dead_runs()
        self.log(
            "info",
            "agent.sources",
            sources={p.name: p.schedule.describe() for p in plans.values()},
            config=self.options.config_path,
        )

    def _forget_dead_runs(self) -> None:
        """Runs the state file says are going but whose process is gone (a killed agent):
        recorded as lost, so that neither ``status`` nor ``min_interval`` counts them."""
        for name, entry in self.state.load().items():
            dead = set(entry.running) - set(entry.live_runs())
            if not dead:
                continue

            def lose(entry: SourceState, dead: set[str] = dead) -> None:
                for run_id in dead:
                    info = entry.running.pop(run_id, None) or {}
                    started = _parse(info.get("started")) or self.options.clock.now()
                    entry.last_result = RunResult(
                        run_id=run_id,
                        trigger=str(info.get("trigger", "")),
                        outcome="lost",
                        started=started,
                        error="the process that ran it stopped before it ended",
                    )

            self.state.update(name, lose)
            for run_id in dead:
                self.log("warning", "backup.lost", source=name, run_id=run_id,
                         backup_guid=run_id)  # fmt: skip

    def reload(self) -> None:
        """Read the file again; a broken file keeps the sources as they were."""
        try:
            config = load_config(self.options.config_path)
        except Exception as exc:  # a reload must never stop the agent
            self.log("error", "agent.reload_failed", error=str(exc),
                     message="the file cannot be read; the sources stay as they were")  # fmt: skip
            return
        self.apply(config)
        self.log("info", "agent.reloaded")

    # --- the schedule ---------------------------------------------------------------

    def look(self, now: datetime) -> int:
        """Decide the slots that have come for every source and start the runs they ask
        for; how many runs were started or queued."""
        due_lanes = [
            lane
            for lane in self.lanes.values()
            if lane.active and (lane.next_slot is None or lane.next_slot <= now)
        ]
        if not due_lanes:
            return 0
        entries = self.state.load()
        started = 0
        for lane in due_lanes:
            entry = entries.get(lane.plan.name) or SourceState(since=now)
            if entry.since is None:
                entry.since = now
            mine = lane.task is not None and not lane.retry_pending
            # A manual run (safehold agent run) going beside counts as running too.
            others = any(info.get("pid") != _PID for info in entry.live_runs().values())
            due = due_slots(
                lane.plan,
                entry,
                now,
                running=mine or others,
                waiting=len(lane.waiting) + lane.retry_pending,
                next_slot=lane.next_slot,
            )
            if due.since is not None:
                # The decisions are written before any run starts: a crash now does not
                # run these slots a second time after the restart (and a failed write
                # leaves them to be decided again at the next look).
                self.state.update(lane.plan.name, _decided_until(due.since))
            lane.next_slot = due.next_slot
            started += self._act(lane, due.decisions, due.left_out)
        return started

    def _about(self, lane: _Lane) -> dict[str, object]:
        """The fields of a line about a source (not one run)."""
        found: dict[str, object] = {"source": lane.plan.name, "plan": lane.plan.key}
        if lane.identifier or lane.plan.identifier:
            found["identifier"] = lane.identifier or lane.plan.identifier
        return found

    def _act(self, lane: _Lane, decisions: list[SlotDecision], left_out: bool) -> int:
        plan = lane.plan
        missed = [d.slot_at for d in decisions if d.state is SlotState.MISSED]
        if missed or left_out:
            self.log(
                "warning",
                "slots.missed",
                **self._about(lane),
                count=len(missed),
                first=missed[0].isoformat() if missed else None,
                last=missed[-1].isoformat() if missed else None,
                more=left_out or None,
                message="no run started within these slots' start window (the agent was "
                "not running)",
            )
        started = 0
        for decision in decisions:
            if decision.state is SlotState.SKIPPED:
                refused = plan.exit_if_in_progress and (decision.reason or "").startswith("overlap")
                self.log(
                    "warning" if refused else "info",
                    "slot.skipped",
                    **self._about(lane),
                    slot=decision.slot_at.isoformat(),
                    reason=decision.reason,
                    # service-backup's words, which its users' monitors look for.
                    message=IN_PROGRESS_MESSAGE if refused else None,
                )
            elif decision.queues_a_run:
                started += 1
                if lane.task is None:
                    self._start(lane, decision.trigger, decision.slot_at)
                else:
                    lane.waiting.append((decision.trigger, decision.slot_at))
                    self.log("info", "backup.queued", **self._about(lane),
                             slot=decision.slot_at.isoformat(),
                             reason="a run of the source is going")  # fmt: skip
        return started

    # --- runs -----------------------------------------------------------------------

    def _start(self, lane: _Lane, trigger: str, slot: datetime | None) -> None:
        task = asyncio.create_task(self._attempts(lane, trigger, slot))
        lane.task = task

        def done(_: asyncio.Task[None]) -> None:
            lane.task = None
            if lane.waiting and lane.active and not self.stop.is_set():
                next_trigger, next_slot = lane.waiting.popleft()
                self._start(lane, next_trigger, next_slot)

        task.add_done_callback(done)

    async def _attempts(self, lane: _Lane, trigger: str, slot: datetime | None) -> None:
        """A slot's run and its retries, then its retention."""
        plan = lane.plan
        attempt = 1
        while True:
            request = RunRequest(
                config_path=self.options.config_path,
                source=plan.name,
                plan=plan.key,
                state=self.state,
                clock=self.options.clock,
                sink=self.sink,
                run_id=str(uuid.uuid4()),
                trigger=trigger if attempt == 1 else "retry",
                attempt=attempt,
                slot=slot,
                timeout=plan.timeout,
                identifier=lane.identifier or plan.identifier,
            )
            lane.request = request
            if self.stop.is_set():
                return  # stopped while this run waited to start
            await self._ping(plan.name, "start", request.run_id)
            try:
                result = await run_backup(request, on_start=self._on_start(lane))
            except Exception as exc:  # the agent must outlive any one run's trouble
                self.log("error", "backup.error", source=plan.name, run_id=request.run_id,
                         backup_guid=request.run_id, error=str(exc))  # fmt: skip
                return
            finally:
                lane.proc = None
                lane.identifier = request.identifier
            if result.outcome not in ("skipped", "in-progress"):
                event = "success" if result.outcome in SAVED else "fail"
                await self._ping(plan.name, event, request.run_id)
            if result.outcome in SAVED or (result.outcome in _RETRIED and attempt > plan.retries):
                await self._run_ended(lane, result)
            if result.outcome in SAVED:
                if plan.retention and not self.stop.is_set():
                    await run_retention(request, on_start=self._on_start(lane))
                    lane.proc = None
                return
            if result.outcome not in _RETRIED or attempt > plan.retries or self.stop.is_set():
                if result.outcome in _RETRIED and plan.retries:
                    request.log("error", "backup.gave_up", attempts=attempt,
                                error=result.error or None)  # fmt: skip
                return
            delay = plan.retry_in(attempt)
            request.log("warning", "backup.retrying", attempt=attempt, next_attempt=attempt + 1,
                        delay_s=delay, error=result.error or None)  # fmt: skip
            lane.retry_pending = True
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=delay)
            finally:
                lane.retry_pending = False
            if self.stop.is_set():
                return
            attempt += 1

    async def _ping(self, source: str, event: str, run_id: str) -> None:
        """Queue a ping for the background sender; a trouble is logged, never raised."""
        try:
            if await asyncio.to_thread(
                self.alerts.ping, source, event, run_id, self.options.clock.now()
            ):
                self._wake.set()
        except Exception as exc:
            self.log("error", "alert.queue_failed", source=source, run_id=run_id,
                     what=f"ping {event}", error=str(exc))  # fmt: skip

    async def _run_ended(self, lane: _Lane, result: RunResult) -> None:
        """Open or resolve the source's incident after a run's last attempt."""
        plan = lane.plan
        try:
            changed = await asyncio.to_thread(
                self.alerts.run_ended, plan.name, plan.key, result, self.options.clock.now()
            )
        except Exception as exc:
            self.log("error", "alert.queue_failed", source=plan.name, run_id=result.run_id,
                     what="message", error=str(exc))  # fmt: skip
            return
        if changed:
            self._wake.set()

    async def deliver(self) -> None:
        """Send what the outbox holds as it comes due, until :attr:`_closing` (a thread
        sends, so a slow receiver never holds a run up; between two deliveries it looks
        whether the agent is closing, so a stop waits for one delivery at most)."""
        failing = False
        while not self._closing:
            self._wake.clear()  # before sending: a wake set meanwhile is not lost
            try:
                await asyncio.to_thread(
                    self.alerts.deliver_due, self.options.clock.now(), lambda: self._closing
                )
                failing = False
            except Exception as exc:  # the state file unreadable: said once, tried again
                if not failing:
                    self.log("error", "alert.deliver_failed", error=str(exc))
                failing = True
            # Woken, or time-out: no cancellation here (3.11's wait_for may swallow one).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=DELIVER_EVERY)

    def _on_start(self, lane: _Lane) -> Callable[[asyncio.subprocess.Process], None]:
        """Keep a lane's child; one that starts after the stop began is stopped at once
        (:meth:`stop_runs` saw no child to stop yet)."""

        def started(proc: asyncio.subprocess.Process) -> None:
            lane.proc = proc
            if self.stop.is_set():
                stopping = asyncio.ensure_future(stop_child(proc, self.options.stop_grace))
                self._stopping.add(stopping)  # a task nobody references may be collected
                stopping.add_done_callback(self._stopping.discard)

        return started

    async def run(self) -> None:
        """Look at the schedules every tick until :attr:`stop` is set; then stop the runs.
        Alerts and pings are sent beside, by :meth:`deliver`."""
        self._closing = False
        sender = asyncio.create_task(self.deliver())
        try:
            await self._loop()
        finally:
            # What is not sent yet stays in agent.json, for the next start.
            self._closing = True
            self._wake.set()
            await sender

    async def _loop(self) -> None:
        failing = False
        while not self.stop.is_set():
            try:
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                self.look(self.options.clock.now())
                if failing:
                    self.log("info", "agent.look_works_again")
                failing = False
            except Exception as exc:  # a full disk, a state file gone bad: said, then retried
                if not failing:  # once, not every tick until it is fixed
                    self.log("error", "agent.look_failed", error=str(exc),
                             message="the schedules are looked at again every tick")  # fmt: skip
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=self.options.tick_interval)
        await self.stop_runs()

    async def stop_runs(self) -> None:
        """Interrupt every running child (SIGINT, SIGKILL after the grace) and wait for
        their ends to be recorded."""
        running = [lane for lane in self.lanes.values() if lane.task is not None]
        if running:
            self.log("info", "agent.stopping", running=[lane.plan.name for lane in running],
                     grace_s=self.options.stop_grace)  # fmt: skip
        for lane in running:
            lane.waiting.clear()
            if lane.request is not None:
                lane.request.stopped = True
        stops = [
            stop_child(lane.proc, self.options.stop_grace)
            for lane in running
            if lane.proc is not None
        ]
        await asyncio.gather(*stops, return_exceptions=True)
        tasks = [lane.task for lane in running if lane.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._stopping, return_exceptions=True)


_PID = os.getpid()  # this process: its own runs in the state file are not "others"


def _decided_until(since: datetime) -> Callable[[SourceState], None]:
    def change(entry: SourceState) -> None:
        entry.since = since

    return change


def _first_seen(entry: SourceState, now: datetime) -> None:
    if entry.since is None:
        entry.since = now


def _parse(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


async def run_agent(options: AgentOptions, sink: LogSink) -> None:
    """Run the agent until SIGTERM or SIGINT; SIGHUP reads the file again."""
    config = load_config(options.config_path)
    for warning in config.warnings:
        sink(LogEvent(utcnow(), "warning", "config.warning", {"message": warning}))
    with hold_agent_lock(options.state_dir):
        agent = StandaloneAgent(options, config, sink)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, agent.stop.set)
        loop.add_signal_handler(signal.SIGINT, agent.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: setattr(agent, "reload_requested", True))
        agent.log("info", "agent.started", state_dir=str(options.state_dir),
                  sources=sorted(agent.lanes))  # fmt: skip
        try:
            await agent.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        agent.log("info", "agent.stopped")
