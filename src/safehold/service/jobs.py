"""Jobs on procrastinate's queue: queueing a run, running it on a worker, ending it.

A run row (``runs``) is the service's record of one attempt; a procrastinate job is how a
worker gets to it. :meth:`Jobs.defer` queues the job ``safehold.run`` for a run, with the
plan's key as procrastinate's ``lock``, so that the jobs of one plan run one at a time in
the order they were queued whatever the number of workers and machines.

A worker that takes the job (:meth:`Jobs.execute`):

1. **claims** the run: ``queued`` -> ``running`` in one ``UPDATE``; a job whose run is not
   ``queued`` any more (a second job for the same run, or a cancelled run) does nothing;
   a claim tried again after its answer was lost finds the run it already took;
2. runs it in a child process (:mod:`.child`), storing its log lines as they come;
3. **ends** it: the run's state, phases, snapshot, bytes and error from the child's record,
   the slot's state from the run's; a failed run with retries left gets a new run
   (``trigger = retry``, ``attempt + 1``), queued after the plan's back-off.

A repository's prune plan (:mod:`.plans`) runs ``safehold prune --config FILE`` the same
way, under the repository's lock rather than a plan's, and takes none of the repository's
``max_concurrent_jobs`` slots: backups never wait for a prune. A repository's verify plan
runs ``safehold verify --config FILE --slice-state FILE`` likewise (it only reads), and
its end records the slice in the rotation (:mod:`.verify`).

A worker killed mid-run leaves its job ``doing`` with procrastinate, holding the plan's
lock. :meth:`Jobs.reap` (every tick) finds such jobs by their worker's stale heartbeat,
marks the job failed and the run ``worker_lost``, and queues a new attempt: a lost worker
is not the run's fault, so it is retried at least once even when the plan has no retries.
Retrying the stalled job itself would collide with a newer job of the same plan.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from procrastinate import App, JobContext, PsycopgConnector
from procrastinate.jobs import Status
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert

from safehold.catalog import Run, RunKind, RunLine, RunState, RunTrigger
from safehold.clock import SYSTEM_CLOCK, Clock, utcnow
from safehold.errors import SafeholdError
from safehold.runs import child
from safehold.runs.child import (
    ChildResult,
    LogLine,
    backup_argv,
    drill_argv,
    forget_argv,
    prune_argv,
    restore_argv,
    retention_argv,
    run_child,
    stop_child,
    verify_argv,
)
from safehold.service.drills import drill_source, pick_snapshot, record_drill
from safehold.service.limits import write_slots
from safehold.service.plans import PlanSpec
from safehold.service.restore_points import held_snapshots, mark_forgotten, record_point
from safehold.service.verify import (
    DAMAGE_HINT,
    load_rotation,
    read_state,
    record_slice,
    slice_timing,
    write_state,
)
from safehold.service.verify_slice import SliceResult

__all__ = ["RUN_TASK", "Jobs", "Queue", "outcome_of", "submit"]

RUN_TASK = "safehold.run"
STALL_SECONDS = 30.0  # a worker silent this long is lost (it heart-beats every 5 s)
_FLUSH_EVERY = 0.5  # seconds between writes of a running job's log lines

# A worker whose heartbeats have failed this long stops its running children (fence), which
# takes at most child.TERM_WAIT more: done before the others reap its jobs, once
# procrastinate's heartbeat is STALL_SECONDS old (a beat every 5 s: 25 s at the least).
# Shorter windows would fence runs through an ordinary database restart or fail-over;
# longer ones delay the retry of a lost worker's runs (docs/architecture.md).
FENCE_SECONDS = 15.0
# The ledger knows no "worker lost" or "cancelled": its slot failed.
_SLOT_STATE = {RunState.WORKER_LOST: "failed", RunState.CANCELLED: "failed"}
DB_PATIENCE = 600.0  # seconds a run's end waits for the database to come back
DB_RETRY_MAX = 10.0

log = logging.getLogger("safehold.service")
run_log = logging.getLogger("safehold.service.run")  # the runs' own lines, passed on
_T = TypeVar("_T")


@dataclass(frozen=True)
class Outcome:
    """A run's end as the catalog records it."""

    state: RunState
    reason: str | None = None  # for the slot: why skipped, or what failed
    error: str | None = None
    hint: str | None = None


def outcome_of(result: ChildResult) -> Outcome:
    """The run state a child's exit and record stand for."""
    record = result.record or {}
    outcome = record.get("outcome")
    error = record.get("error") or None
    if result.killed:
        return Outcome(RunState.TIMED_OUT, "killed by the service after its time-out", error)
    if outcome == "success":
        return Outcome(RunState.SUCCEEDED)
    if outcome == "partial":
        # The snapshot is saved: a file could not be read, or a destination failed.
        warnings = "; ".join(record.get("warnings") or []) or error
        return Outcome(RunState.SUCCEEDED, None, warnings)
    if outcome == "skipped":
        return Outcome(RunState.SKIPPED, record.get("reason") or "skipped by its check")
    if outcome == "in-progress":
        return Outcome(RunState.SKIPPED, "another run of this source was in progress")
    if outcome == "timeout":
        return Outcome(RunState.TIMED_OUT, "the run's time-out", error)
    if outcome is None:
        tail = "\n".join(result.stderr_tail[-5:])
        message = f"the run's process ended with exit code {result.exit_code}"
        return Outcome(RunState.FAILED, message, f"{message}: {tail}" if tail else message)
    return Outcome(RunState.FAILED, error or outcome, error or outcome, record.get("hint") or None)


def exit_outcome(result: ChildResult, command: str) -> Outcome:
    """A ``forget`` or ``prune`` child's end: its exit code says it all."""
    if result.killed:
        return Outcome(RunState.TIMED_OUT, "killed by the service after its time-out")
    if result.exit_code == 0:
        return Outcome(RunState.SUCCEEDED)
    tail = "\n".join(result.stderr_tail[-5:]) or f"exit code {result.exit_code}"
    return Outcome(RunState.FAILED, f"{command} failed", f"{command} failed: {tail}")


class Queue:
    """Runs put in the queue: a run row, then its procrastinate job. All a command or an
    API request needs to ask for work, without being a worker."""

    def __init__(
        self, app: App, engine: Engine, *, plans: Callable[[], Mapping[str, PlanSpec]]
    ) -> None:
        self.app = app
        self.engine = engine
        self._plans = plans  # read at each use: a reload replaces them

    def spec(self, plan_key: str) -> PlanSpec | None:
        """The plan ``plan_key`` as the service has it now (None: not any more)."""
        return self._plans().get(plan_key)

    async def defer(
        self, run_id: uuid.UUID, plan_key: str, delay: float = 0.0, *, first: bool = False
    ) -> int:
        """Queue the job of run ``run_id`` (after ``delay`` seconds); its job id. ``first``
        puts it before every job queued without it (a retry of work already lost)."""
        spec = self._plans().get(plan_key)
        options: dict[str, Any] = {"lock": spec.lock if spec is not None else plan_key}
        if spec is not None and spec.agent is not None:
            options["queue"] = spec.queue  # its agent takes it, not the service's workers
        if first:
            options["priority"] = 1
        if delay > 0:
            options["schedule_in"] = {"seconds": delay}
        job_id = await self.app.configure_task(RUN_TASK, **options).defer_async(run_id=str(run_id))
        await self.patiently(self._set_job, run_id, job_id)
        return job_id

    def _set_job(self, run_id: uuid.UUID, job_id: int) -> None:
        with self.engine.begin() as db:
            db.execute(
                text("UPDATE runs SET job_id = :j WHERE id = :r"), {"j": job_id, "r": run_id}
            )

    def new_run(
        self,
        plan_key: str,
        *,
        trigger: RunTrigger,
        attempt: int = 1,
        slot_id: int | None = None,
        kind: RunKind = RunKind.BACKUP,
        params: dict[str, Any] | None = None,
    ) -> uuid.UUID:
        """A queued run row for plan ``plan_key`` (no job yet: :meth:`defer` it);
        ``params``: what the job needs beyond its plan (a restore's snapshot and target)."""
        run_id = uuid.uuid4()
        project, name = plan_key.split("/", 1)
        with self.engine.begin() as db:
            plan_id = db.execute(
                text("SELECT id FROM plans WHERE project = :p AND name = :n"),
                {"p": project, "n": name},
            ).scalar_one()
            db.execute(
                insert(Run).values(
                    id=run_id,
                    plan_id=plan_id,
                    slot_id=slot_id,
                    kind=kind.value,
                    trigger=trigger.value,
                    attempt=attempt,
                    state=RunState.QUEUED.value,
                    params=params or {},
                )
            )
            if slot_id is not None:
                db.execute(
                    text(
                        "UPDATE slots SET run_id = :r, state = 'queued', ended_at = NULL "
                        "WHERE id = :s"
                    ),
                    {"r": run_id, "s": slot_id},
                )
        return run_id

    async def submit(
        self,
        plan_key: str,
        *,
        trigger: RunTrigger = RunTrigger.MANUAL,
        kind: RunKind = RunKind.BACKUP,
        params: dict[str, Any] | None = None,
    ) -> uuid.UUID:
        """A new run of plan ``plan_key``, queued now; its id."""
        run_id = await self.patiently(
            self.new_run, plan_key, trigger=trigger, kind=kind, params=params
        )
        await self.defer(run_id, plan_key)
        return run_id

    async def patiently(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``call`` in a thread, tried again while the database cannot be reached.

        A run's end must not be lost because PostgreSQL restarted under it: the child's
        work is done and only the record is missing. Each try waits longer (up to
        :data:`DB_RETRY_MAX` seconds between two) for :data:`DB_PATIENCE` seconds in all.
        """
        deadline = time.monotonic() + DB_PATIENCE
        wait = 0.5
        while True:
            try:
                return await asyncio.to_thread(call, *args, **kwargs)
            except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
                if time.monotonic() + wait > deadline:
                    raise
                log.warning("the database is not answering (%s); trying again in %.0f s",
                            str(exc).splitlines()[0], wait)  # fmt: skip
                await asyncio.sleep(wait)
                wait = min(wait * 2, DB_RETRY_MAX)


def submit(
    conninfo: str,
    engine: Engine,
    specs: Mapping[str, PlanSpec],
    plan_key: str,
    *,
    kind: RunKind = RunKind.BACKUP,
    params: dict[str, Any] | None = None,
) -> uuid.UUID:
    """Queue one run from outside the service's loop (a command); its id. A worker of
    ``safehold serve`` runs it."""

    async def go() -> uuid.UUID:
        app = App(connector=PsycopgConnector(conninfo=conninfo))
        register(app)
        async with app.open_async():
            queue = Queue(app, engine, plans=lambda: specs)
            return await queue.submit(plan_key, kind=kind, params=params)

    return asyncio.run(go())


class Jobs(Queue):
    """The workers' side of the service: execute, end and reap runs (and queue them, as
    every :class:`Queue` does)."""

    def __init__(
        self,
        app: App,
        engine: Engine,
        *,
        plans: Callable[[], Mapping[str, PlanSpec]],
        state_dir: Path,
        worker: str,
        conninfo: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(app, engine, plans=plans)
        self.clock = clock  # a verify slice's times (the service's tests run a fast one)
        self.state_dir = state_dir
        self.worker = worker
        self.conninfo = conninfo  # for the repositories' run limits (None: no limits)
        self._children: dict[uuid.UUID, asyncio.subprocess.Process] = {}  # running now
        # Runs an execute of this process holds, from before its claim to its end: the
        # reaper's test of "this process still runs it" (a run row alone cannot tell a live
        # execute from one that died or never started after a claim whose answer was lost).
        self._executing: set[uuid.UUID] = set()
        self._fenced: set[uuid.UUID] = set()
        self._stopping: set[asyncio.Future[None]] = set()  # fenced children being stopped
        # Told (plan key, "start" | "success" | "fail", run id) as a plan's own run starts
        # and ends: the alerts' ping URLs (service/alerts_run.py). Never raises.
        self.on_run: Callable[[str, str, str], Awaitable[None]] | None = None

    def fence(self) -> int:
        """Stop every running child: this worker has been cut off from the database for
        so long that the others are about to end its runs as lost and run them again.
        Stopping them first (Ctrl-C, then SIGKILL after a few seconds: before the others
        reap) is what keeps a run from being made twice at once: a lease that ran out.
        Returns how many were stopped."""
        running = list(self._children.items())
        for run_id, proc in running:
            self._fenced.add(run_id)
            stopping = asyncio.ensure_future(stop_child(proc))
            self._stopping.add(stopping)  # kept until done: a task without a reference may go
            stopping.add_done_callback(self._stopping.discard)
        return len(running)

    async def _fenced_end(
        self, spec: PlanSpec, run_id: uuid.UUID, slot_id: int | None, attempt: int, kind: str
    ) -> None:
        """A run this worker killed when it lost the database: ended as lost, unless the
        others did so first, and then retried as the reaper would."""
        self._fenced.discard(run_id)
        self._verify_state(run_id).unlink(missing_ok=True)  # a verify slice's, if any
        lost = Outcome(
            RunState.WORKER_LOST,
            "worker lost",
            "this worker was cut off from the database for "
            f"{FENCE_SECONDS:.0f} seconds and killed the run",
            "it is retried; see the worker's log for the database errors",
        )
        if not await self.patiently(self.end_run, run_id, slot_id, lost, None):
            return  # another process reaped it and queued the retry
        if kind == spec.kind.value and attempt <= max(spec.retries, 1):
            await self._retry(spec, slot_id, attempt, lost)

    # --- running ----------------------------------------------------------------------

    async def execute(self, run_id: uuid.UUID) -> None:
        """Run the run ``run_id`` to its end (the body of the ``safehold.run`` task)."""
        if run_id in self._executing:
            log.info("run %s: already under way in this process; nothing to do", run_id)
            return
        self._executing.add(run_id)
        try:
            claimed = await self.patiently(self.claim, run_id)
            if claimed is None:
                log.info("run %s: not queued any more; nothing to do", run_id)
                return
            try:
                await self._execute(run_id, *claimed)
            except asyncio.CancelledError:
                # Stopped harder than the grace allowed (a child is killed with the task),
                # wherever the run was: ended as failed unless it has ended already.
                stopped = Outcome(
                    RunState.FAILED,
                    "the service stopped",
                    "the service stopped while the run went on",
                    "it runs again at the plan's next slot",
                )
                self._verify_state(run_id).unlink(missing_ok=True)  # a verify slice's, if any
                await asyncio.shield(
                    self.patiently(self.end_run, run_id, claimed[1], stopped, None)
                )
                raise
            except Exception as exc:
                # Whatever broke, the run must not stay "running" for ever: it is ended
                # as failed (when the database answers), and the job fails with the error.
                log.exception("run %s: the service failed while running it", run_id)
                # The error's first line only: SQLAlchemy's go on with the statement and
                # its parameters, which have no place in the catalog or the API.
                why = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
                broke = Outcome(
                    RunState.FAILED,
                    "the service failed while running it",
                    f"the service failed while running it: {why}",
                    "see the service's log; it runs again at the plan's next slot",
                )
                await asyncio.shield(self.patiently(self.end_run, run_id, claimed[1], broke, None))
                raise
        finally:
            self._executing.discard(run_id)

    async def _execute(
        self,
        run_id: uuid.UUID,
        plan_key: str,
        slot_id: int | None,
        attempt: int,
        kind: str,
        params: dict[str, Any],
    ) -> None:
        spec = self._plans().get(plan_key)
        if spec is None:
            outcome = Outcome(
                RunState.FAILED,
                "the plan is not in the configuration any more",
                f"plan {plan_key} is not in the configuration any more",
                "add it back to the file, or ignore this run",
            )
            await self.patiently(self.end_run, run_id, slot_id, outcome, None)
            return
        if self.on_run is not None and kind == spec.kind.value:
            await self.on_run(plan_key, "start", str(run_id))
        argv = await self._argv(spec, kind, run_id, params)
        env = None
        if spec.env is not None:  # an API plan: its destinations' secrets, opened now
            try:
                env = await self.patiently(spec.env)
            except SafeholdError as exc:
                failed = Outcome(RunState.FAILED, exc.message, exc.message, exc.hint)
                await self.patiently(self.end_run, run_id, slot_id, failed, None)
                return
        lines = _LineWriter(self, run_id, plan_key)
        flusher = asyncio.create_task(lines.run())
        limit = None
        if spec.timeout:
            # A backup's or restore's child keeps its own time-out (its cleanup hooks still
            # run): the parent's limit is a backstop after a grace. Forget and prune have none.
            own = (RunKind.BACKUP.value, RunKind.RESTORE.value)
            grace = child.KILL_GRACE if kind in own else 0.0
            limit = spec.timeout + grace
        # A prune takes no run slot of its repository: it must never make a backup wait.
        # Nor does a verify slice, which only reads.
        caps = () if kind in (RunKind.PRUNE.value, RunKind.VERIFY.value) else spec.limits
        try:
            async with write_slots(self.conninfo, caps, what=f"run {run_id}"):
                result = await run_child(
                    argv,
                    on_line=lines.add,
                    limit=limit,
                    env=env,
                    on_start=lambda proc: self._children.__setitem__(run_id, proc),
                )
        finally:
            self._children.pop(run_id, None)
            flusher.cancel()
            await self.patiently(lines.flush)
        if run_id in self._fenced:
            await self._fenced_end(spec, run_id, slot_id, attempt, kind)
            return
        await self.finish(spec, run_id, slot_id, attempt, kind, result)

    async def finish(
        self,
        spec: PlanSpec,
        run_id: uuid.UUID,
        slot_id: int | None,
        attempt: int,
        kind: str,
        result: ChildResult,
    ) -> bool:
        """End a run from how its child ended (here, or on an agent): its record, then a
        retry or the plan's retention. False if the run had already ended (reaped)."""
        if kind == RunKind.RETENTION.value:
            outcome = exit_outcome(result, "forget")
        elif kind == RunKind.PRUNE.value:
            outcome = exit_outcome(result, "prune")
        elif kind == RunKind.VERIFY.value:
            outcome = await self.patiently(self._verified, spec, run_id, result)
        else:
            outcome = outcome_of(result)
        # A prune's record is its summary, not a backup's: only its end is kept.
        record = result.record if kind in (RunKind.BACKUP.value, RunKind.RESTORE.value) else None
        if kind == RunKind.DRILL.value:
            record = self._drill_record(result, outcome)
        if not await self.patiently(self.end_run, run_id, slot_id, outcome, record):
            return False
        if kind == RunKind.DRILL.value:
            await self.patiently(
                record_drill,
                self.engine,
                run_id=run_id,
                project=spec.project,
                plan=drill_source(spec),
                outcome=record,
                started=utcnow(),
            )
        if kind == RunKind.RETENTION.value and outcome.state is RunState.SUCCEEDED:
            removed = (result.record or {}).get("removed") or []
            await self.patiently(self._forgotten, run_id, removed)
        if kind != spec.kind.value:
            return True  # retention, restore: no retries and nothing after it
        if self.on_run is not None and outcome.state is not RunState.SKIPPED:
            event = "success" if outcome.state is RunState.SUCCEEDED else "fail"
            await self.on_run(spec.key, event, str(run_id))
        if outcome.state in (RunState.FAILED, RunState.TIMED_OUT) and attempt <= spec.retries:
            await self._retry(spec, slot_id, attempt, outcome)
        elif outcome.state is RunState.SUCCEEDED and spec.retention and kind == RunKind.BACKUP:
            retention = await self.patiently(
                self.new_run, spec.key, trigger=RunTrigger.SCHEDULE, kind=RunKind.RETENTION
            )
            await self.defer(retention, spec.key)
        return True

    @staticmethod
    def _drill_record(result: ChildResult, outcome: Outcome) -> dict[str, Any]:
        """A drill child's outcome (``drill --json``), or a failed one for a child that
        printed none (killed, crashed): every drill run leaves its drills row."""
        if result.record is not None and result.record.get("operation") == "drill":
            return result.record
        return {
            "result": "failed",
            "error": outcome.error or outcome.reason or "the drill's process printed no result",
            "finished": utcnow().isoformat(),
        }

    async def drill_snapshot(self, spec: PlanSpec, params: dict[str, Any]) -> str | None:
        """The snapshot a drill run of ``spec`` restores: the one it was asked for, else
        the drill's target among the plan's restore points (None: the catalog knows none,
        and the drill takes the repository's newest)."""
        if params.get("snapshot"):
            return str(params["snapshot"])
        source = drill_source(spec)
        target = await self.patiently(_drill_target, spec, source)
        return await self.patiently(pick_snapshot, self.engine, spec.project, source, target)

    async def _argv(
        self, spec: PlanSpec, kind: str, run_id: uuid.UUID, params: dict[str, Any]
    ) -> list[str]:
        """The child's command line for a run of ``kind`` of the plan ``spec``."""
        if kind == RunKind.DRILL.value:
            return drill_argv(
                spec.config_path,
                drill_source(spec),
                run_id=str(run_id),
                snapshot=await self.drill_snapshot(spec, params),
                state_dir=self.state_dir,
            )
        if kind == RunKind.RESTORE.value:
            return restore_argv(
                spec.config_path,
                spec.name,
                snapshot=str(params["snapshot"]),
                target=params.get("target"),
                replace=bool(params.get("replace")),
                paths=list(params.get("paths") or ()),
            )
        if kind == RunKind.RETENTION.value:
            held = await self.patiently(held_snapshots, self.engine, spec.key)
            if params.get("snapshots"):  # restore points deleted through the service
                return forget_argv(spec.config_path, list(params["snapshots"]), held=held)
            return retention_argv(spec.config_path, spec.name, held=held)
        if kind == RunKind.PRUNE.value:
            return prune_argv(spec.config_path, max_unused=spec.max_unused)
        if kind == RunKind.VERIFY.value:
            state = self._verify_state(run_id)
            await self.patiently(self._write_verify_state, spec, state)
            return verify_argv(spec.config_path, state_file=str(state))
        return backup_argv(
            spec.config_path,
            spec.name,
            run_id=str(run_id),
            plan=spec.key,
            state_dir=self.state_dir / "runs",
        )

    def _verify_state(self, run_id: uuid.UUID) -> Path:
        return self.state_dir / "verify" / f"{run_id}.json"

    def _write_verify_state(self, spec: PlanSpec, path: Path) -> None:
        """The rotation and the slice's timing, for the child (:mod:`.verify`)."""
        timing = slice_timing(
            spec.schedule, spec.verify_period or "30d", spec.verify_margin, self.clock.now()
        )
        write_state(path, timing, load_rotation(self.engine, spec.name))

    def _verified(self, spec: PlanSpec, run_id: uuid.UUID, result: ChildResult) -> Outcome:
        """A verify slice's end: its result recorded in the rotation, and its outcome (failed,
        naming the damaged packs and the snapshots affected, when it found damage)."""
        state = self._verify_state(run_id)
        try:
            # The packs count as read when the slice began: never later than they were.
            read_at = read_state(state)[0].now
        except (OSError, ValueError, KeyError):
            read_at = self.clock.now()
        state.unlink(missing_ok=True)
        record = result.record or {}
        if result.killed or record.get("operation") != "verify":
            return exit_outcome(result, "verify")
        found = SliceResult.from_json(record)
        record_slice(self.engine, spec.name, found, read_at, run_id=run_id)
        if found.ok:
            return Outcome(RunState.SUCCEEDED)
        message = found.describe_damage()
        return Outcome(RunState.FAILED, "verification found damage", message, DAMAGE_HINT)

    async def _retry(
        self, spec: PlanSpec, slot_id: int | None, attempt: int, outcome: Outcome
    ) -> None:
        delay = spec.retry_in(attempt)
        run_id = await self.patiently(
            self.new_run,
            spec.key,
            trigger=RunTrigger.RETRY,
            attempt=attempt + 1,
            slot_id=slot_id,
            kind=spec.kind,
        )
        log.info(
            "plan %s: attempt %d %s; attempt %d in %.0f s (run %s)",
            spec.key, attempt, outcome.state.value, attempt + 1, delay, run_id,
        )  # fmt: skip
        await self.defer(run_id, spec.key, delay, first=True)

    def claim(
        self, run_id: uuid.UUID, worker: str | None = None
    ) -> tuple[str, int | None, int, str, dict[str, Any]] | None:
        """Mark a queued run running on ``worker`` (default: this process); its plan, slot,
        attempt, kind and parameters, or None if it is not queued any more.

        This process's own claim also takes a run it already marked running: a claim whose
        commit reached the server but whose answer was lost (the server stopped in
        between), tried again by :meth:`patiently`. Only :meth:`execute` claims for this
        process, and it holds the run in ``_executing`` first, so no other execute of it
        is under way here. An agent's claim (``worker`` given) never takes a running run:
        a second job for the same run must not run it twice."""
        with self.engine.begin() as db:
            row = db.execute(
                text(
                    "UPDATE runs r SET state = 'running', worker = :w, started_at = "
                    "CASE WHEN r.state = 'queued' THEN now() ELSE r.started_at END "
                    "FROM plans p WHERE r.id = :r AND p.id = r.plan_id AND (r.state = 'queued' "
                    "OR (:own AND r.state = 'running' AND r.worker = :w)) "
                    "RETURNING r.slot_id, r.attempt, r.kind, p.project, p.name, r.params"
                ),
                {"w": worker or self.worker, "r": run_id, "own": worker is None},
            ).one_or_none()
            if row is None:
                return None
            slot_id, attempt, kind, project, name, params = row
            if slot_id is not None:
                db.execute(
                    text("UPDATE slots SET state = 'running', reason = NULL WHERE id = :s"),
                    {"s": slot_id},
                )
        return f"{project}/{name}", slot_id, attempt, kind, params or {}

    def end_run(
        self,
        run_id: uuid.UUID,
        slot_id: int | None,
        outcome: Outcome,
        record: dict[str, Any] | None,
    ) -> bool:
        """Record a run's end, if it is still running (not ended meanwhile by a process
        that reaped it); whether it was."""
        record = record or {}
        summary = record.get("summary") or {}
        with self.engine.begin() as db:
            ended = db.execute(
                text(
                    "UPDATE runs SET state = :state, ended_at = now(), phases = :phases, "
                    "snapshot_id = :snap, bytes_read = :read, bytes_added = :added, "
                    "repository_bytes = :repo_bytes, error = :error, hint = :hint "
                    "WHERE id = :r AND state = 'running'"
                ),
                {
                    "state": outcome.state.value,
                    "phases": _json(record.get("phases") or []),
                    "snap": record.get("snapshot"),
                    "read": summary.get("bytes_read"),
                    "added": summary.get("data_added"),
                    # The repository's packs after the backup (the metrics' and reports'
                    # repository size); a child of an older version gives none.
                    "repo_bytes": summary.get("repository_packs_bytes"),
                    "error": outcome.error,
                    "hint": outcome.hint,
                    "r": run_id,
                },
            )
            if not ended.rowcount:
                return False
            if outcome.state is RunState.SUCCEEDED and record.get("operation") == "backup":
                record_point(db, run_id, record, taken_at=None)
            if slot_id is not None:
                db.execute(
                    text(
                        "UPDATE slots SET state = :state, reason = :reason, ended_at = now() "
                        "WHERE id = :s AND run_id = :r"
                    ),
                    {
                        "state": _SLOT_STATE.get(outcome.state, outcome.state.value),
                        "reason": outcome.reason,
                        "s": slot_id,
                        "r": run_id,
                    },
                )

        return True

    def _forgotten(self, run_id: uuid.UUID, removed: list[str]) -> None:
        """Note the snapshots a retention run removed as forgotten restore points."""
        with self.engine.begin() as db:
            plan_id = db.execute(
                text("SELECT plan_id FROM runs WHERE id = :r"), {"r": run_id}
            ).scalar_one()
            mark_forgotten(db, plan_id, removed)

    # --- lost workers -----------------------------------------------------------------

    async def reap(self) -> int:
        """End the runs of jobs whose worker stopped heart-beating; how many."""
        stalled = await self.app.job_manager.get_stalled_jobs(
            task_name=RUN_TASK, seconds_since_heartbeat=STALL_SECONDS
        )
        ended = 0
        for job in stalled:
            assert job.id is not None
            run_id = uuid.UUID(str(job.task_kwargs["run_id"]))
            if run_id in self._executing:
                # This process runs it: alive, only its queue heartbeat is late (after a
                # database outage, until the worker has registered again).
                continue
            await self.app.job_manager.finish_job(job, Status.FAILED, delete_job=False)
            lost = await self.patiently(self._lose, run_id)
            if lost is None:
                continue
            ended += 1
            plan_key, slot_id, attempt, kind = lost
            spec = self._plans().get(plan_key)
            # A lost retention is not retried: the plan's next backup queues another.
            if spec is not None and kind == spec.kind and attempt <= max(spec.retries, 1):
                await self._retry(
                    spec, slot_id, attempt, Outcome(RunState.WORKER_LOST, "worker lost")
                )
        return ended

    def _lose(self, run_id: uuid.UUID) -> tuple[str, int | None, int, str] | None:
        # One UPDATE decides: when two processes reap the same job, one of them ends it.
        with self.engine.begin() as db:
            row = db.execute(
                text(
                    "UPDATE runs r SET state = 'worker_lost', ended_at = now(), "
                    "error = CASE WHEN r.worker LIKE 'agent:%' THEN :agent_error ELSE :error "
                    "END, hint = :hint FROM plans p "
                    "WHERE r.id = :r AND p.id = r.plan_id AND r.state IN ('running', 'queued') "
                    "RETURNING r.slot_id, r.attempt, r.kind, p.project, p.name"
                ),
                {
                    "r": run_id,
                    "error": _LOST_ERROR,
                    "agent_error": _AGENT_LOST,
                    "hint": _LOST_HINT,
                },
            ).one_or_none()
            if row is None:
                return None
            slot_id, attempt, kind, project, name = row
            if slot_id is not None:
                db.execute(
                    text(
                        "UPDATE slots SET state = 'failed', reason = 'worker lost', "
                        "ended_at = now() WHERE id = :s AND run_id = :r"
                    ),
                    {"s": slot_id, "r": run_id},
                )
        return f"{project}/{name}", slot_id, attempt, kind


def _drill_target(spec: PlanSpec, source: str) -> str:
    """The drill's ``target`` (latest or rotating), read from the plan's file."""
    from safehold.config import load_config

    # An API plan's file names its destinations' secrets as variables: its env opens them.
    try:
        env = None if spec.env is None else {**os.environ, **spec.env()}
    except SafeholdError:
        return "latest"  # the run fails next, opening the same secrets, and says why
    found = load_config(spec.config_path, env=env).sources.get(source)
    drill = found.common.drill if found is not None else None
    return drill.target if drill is not None else "latest"


_LOST_ERROR = "the worker running it stopped (killed, or cut off from the database)"
_AGENT_LOST = "agent lost: the agent running it stopped heart-beating (stopped, or cut off)"
_LOST_HINT = "it is retried on another worker; see that worker's log for why it stopped"


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


class _LineWriter:
    """Buffers a running job's log lines, writes them every half second, and passes each
    to the service's own log (one JSON object a line with ``--log-format json``)."""

    def __init__(self, jobs: Jobs, run_id: uuid.UUID, plan: str) -> None:
        self.engine = jobs.engine
        self.run_id = run_id
        self.plan = plan
        self.pending: list[LogLine] = []
        self.seq = 0

    def add(self, line: LogLine) -> None:
        self.pending.append(line)
        fields = {"run_id": str(self.run_id), "backup_guid": str(self.run_id), "plan": self.plan}
        fields.update(line.fields)
        run_log.log(
            _LEVELS.get(line.level, logging.INFO),
            "%s %s: %s",
            self.plan,
            str(self.run_id)[:8],
            line.message,
            extra={"fields": {"event": line.message, **fields}},
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_EVERY)
            try:
                await asyncio.to_thread(self.flush)
            except sa_exc.SQLAlchemyError:
                continue  # kept for the next try; the final flush waits for the database

    def flush(self) -> None:
        lines, self.pending = self.pending, []
        if not lines:
            return
        now = utcnow()
        rows = []
        for offset, line in enumerate(lines):
            message = line.message
            if line.fields:
                message = f"{message} {_json(line.fields)}"
            rows.append(
                {"run_id": self.run_id, "seq": self.seq + offset, "at": now,
                 "level": line.level, "message": message}
            )  # fmt: skip
        try:
            with self.engine.begin() as db:
                db.execute(insert(RunLine), rows)
        except BaseException:
            self.pending[:0] = lines  # not lost: written with the next flush
            raise
        self.seq += len(rows)


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


async def run_task(context: JobContext, run_id: str) -> None:
    """The ``safehold.run`` task: the worker's :class:`Jobs` runs the run."""
    jobs: Jobs = context.additional_context["jobs"]
    await jobs.execute(uuid.UUID(run_id))


def register(app: App) -> None:
    """Register the service's tasks on ``app``."""
    app.task(name=RUN_TASK, pass_context=True)(run_task)
