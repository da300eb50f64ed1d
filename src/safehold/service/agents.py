"""Agents: machines that run their plans' jobs themselves, pulling them over the API.

A plan with ``agent: NAME`` has its jobs queued on that agent's own procrastinate queue
(``agent:PROJECT/NAME``, :func:`~safehold.service.plans.agent_queue`), which the
service's workers never take. The agent (``safehold agent --server URL``) holds no
database credentials: through the API it registers, heart-beats and long-polls, and
this module does the queue's side for it, inside ``safehold serve``:

- **register**: the agent's row (the first token that registers a name owns it) and a
  procrastinate *worker* of its own, whose heartbeat the agent's heartbeats keep fresh.
  A new registration (the agent started again) unregisters the previous worker, so the
  jobs it held are found stalled at once and retried: a killed agent's runs end as
  "agent lost" and run again when it comes back, exactly as a lost worker's do, by the
  same reaper (:meth:`Jobs.reap`).
- **next job**: takes a job of the agent's queue for its worker (procrastinate's
  ``fetch_job``, so the plan's lock holds as for any worker), claims its run for the
  agent and answers what to run; waits up to ``wait`` seconds for one (a long poll).
- **lines** and **end**: the run's log lines, and its end from the agent's report of its
  child (exit code, run record, killed or not), through the same :meth:`Jobs.finish` as a
  worker's own child: the record, the retries, the retention after a success.

An agent sees only the runs it claimed: any other run id is "not found".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from procrastinate.jobs import Status
from sqlalchemy import insert, text

from safehold.catalog import RunKind, RunLine, RunState
from safehold.clock import utcnow
from safehold.errors import Conflict, NotFound, SafeholdError
from safehold.runs.child import ChildResult
from safehold.service.drills import drill_source
from safehold.service.jobs import Jobs, Outcome
from safehold.service.plans import agent_queue
from safehold.service.restore_points import held_snapshots

__all__ = ["HEARTBEAT_EVERY", "AgentRef", "Agents", "agent_label"]

HEARTBEAT_EVERY = 5.0  # seconds between an agent's heartbeats (it is told at registration)
POLL = 1.0  # seconds between two looks at an agent's queue during a long poll
MAX_LINES = 1000  # log lines an agent may send in one call


def agent_label(project: str, name: str) -> str:
    """How a run names the agent that runs it (its ``worker`` column)."""
    return f"agent:{project}/{name}"


@dataclass(frozen=True)
class AgentRef:
    """A registered agent, as the API's calls find it from their token."""

    id: int
    project: str
    name: str
    worker_id: int

    @property
    def label(self) -> str:
        """The agent as runs name it."""
        return agent_label(self.project, self.name)

    @property
    def queue(self) -> str:
        """The procrastinate queue of its jobs."""
        return agent_queue(self.project, self.name)


class Agents:
    """The service's side of its agents, over its :class:`Jobs` (queue, catalog, plans)."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs
        self.app = jobs.app
        self.engine = jobs.engine

    # --- registration and heartbeats --------------------------------------------------

    async def register(
        self, *, project: str, name: str, token_id: str, host: str, version: str
    ) -> AgentRef:
        """Register (or register again) the agent ``name`` for the token ``token_id``."""
        worker_id = await self.app.job_manager.register_worker()
        try:
            agent_id, old = await self.jobs.patiently(
                self._register_row, project, name, token_id, host, version, worker_id
            )
        except BaseException:
            await self.app.job_manager.unregister_worker(worker_id)
            raise
        if old is not None and old != worker_id:
            # Its jobs lose their worker: the reaper finds them stalled at once.
            await self.app.job_manager.unregister_worker(old)
        return AgentRef(agent_id, project, name, worker_id)

    def _register_row(
        self, project: str, name: str, token_id: str, host: str, version: str, worker_id: int
    ) -> tuple[int, int | None]:
        with self.engine.begin() as db:
            found = db.execute(
                text(
                    "SELECT id, token_id, worker_id FROM agents "
                    "WHERE project = :p AND name = :n FOR UPDATE"
                ),
                {"p": project, "n": name},
            ).one_or_none()
            if found is not None and found.token_id not in (None, token_id):
                raise Conflict(
                    f"agent {name!r} is registered with another token",
                    hint="give each agent a token of its own (safehold token create --role "
                    "agent), or revoke the old one first",
                )
            mine = db.execute(
                text("SELECT name FROM agents WHERE token_id = :t AND name <> :n"),
                {"t": token_id, "n": name},
            ).first()
            if mine is not None:
                raise Conflict(
                    f"this token belongs to agent {mine.name!r}",
                    hint="one token per agent: make another with safehold token create",
                )
            row = db.execute(
                text(
                    "INSERT INTO agents (project, name, token_id, host, version, worker_id) "
                    "VALUES (:p, :n, :t, :h, :v, :w) ON CONFLICT (project, name) DO UPDATE SET "
                    "token_id = excluded.token_id, host = excluded.host, "
                    "version = excluded.version, worker_id = excluded.worker_id, "
                    "registered_at = now(), heartbeat_at = now(), stopped_at = NULL "
                    "RETURNING id"
                ),
                {"p": project, "n": name, "t": token_id, "h": host, "v": version,
                 "w": worker_id},
            ).scalar_one()  # fmt: skip
        return int(row), (found.worker_id if found is not None else None)

    def find(self, token_id: str) -> AgentRef:
        """The agent that registered with ``token_id``; NotFound before it registered."""
        with self.engine.connect() as db:
            row = db.execute(
                text(
                    "SELECT id, project, name, worker_id FROM agents "
                    "WHERE token_id = :t AND worker_id IS NOT NULL"
                ),
                {"t": token_id},
            ).one_or_none()
        if row is None:
            raise NotFound(
                "this token's agent has not registered",
                hint="the agent registers first (POST /api/v1/agent/register)",
            )
        return AgentRef(row.id, row.project, row.name, row.worker_id)

    async def heartbeat(self, agent: AgentRef) -> list[str]:
        """Keep the agent's worker alive; the runs it must stop (cancelled meanwhile)."""
        alive = await self.jobs.patiently(self._beat, agent)
        if not alive:
            # Silent so long that the workers forgot its worker: its jobs were reaped
            # already. It is told to register again.
            raise NotFound(
                "this agent was silent too long and is not registered any more",
                hint="register again (the agent does so by itself)",
            )
        aborting = await self.app.job_manager.list_jobs_to_abort_async(queue=agent.queue)
        ids = list(aborting)
        if not ids:
            return []
        with self.engine.connect() as db:
            runs = db.execute(
                text("SELECT id FROM runs WHERE job_id = ANY(:j) AND worker = :w"),
                {"j": ids, "w": agent.label},
            ).scalars()
            return [str(run) for run in runs]

    def _beat(self, agent: AgentRef) -> bool:
        with self.engine.begin() as db:
            found = db.execute(
                text(
                    "UPDATE procrastinate_workers SET last_heartbeat = now() WHERE id = :w "
                    "RETURNING id"
                ),
                {"w": agent.worker_id},
            ).one_or_none()
            db.execute(
                text("UPDATE agents SET heartbeat_at = now() WHERE id = :a"), {"a": agent.id}
            )
        return found is not None

    async def stop(self, agent: AgentRef) -> None:
        """The agent stops cleanly: its worker goes, its row says so."""
        await self.app.job_manager.unregister_worker(agent.worker_id)
        await self.jobs.patiently(self._stopped, agent)

    def _stopped(self, agent: AgentRef) -> None:
        with self.engine.begin() as db:
            db.execute(
                text("UPDATE agents SET stopped_at = now(), worker_id = NULL WHERE id = :a"),
                {"a": agent.id},
            )

    # --- jobs ---------------------------------------------------------------------------

    async def next_job(
        self, agent: AgentRef, wait: float, *, secure: bool = True
    ) -> dict[str, Any] | None:
        """The agent's next job, claimed for it; None if none came within ``wait`` s.
        ``secure``: the agent's connection is TLS or loopback, so that a plan made through
        the API may send its credentials over it (otherwise its runs fail, saying why)."""
        deadline = time.monotonic() + wait
        while True:
            job = await self.app.job_manager.fetch_job(
                queues=[agent.queue], worker_id=agent.worker_id
            )
            if job is not None:
                run_id = uuid.UUID(str(job.task_kwargs["run_id"]))
                found = await self._take(agent, job.id, run_id, secure)
                if found is not None:
                    return found
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(POLL, left))

    async def _take(
        self, agent: AgentRef, job_id: int | None, run_id: uuid.UUID, secure: bool
    ) -> dict[str, Any] | None:
        """Claim the run of a job the agent fetched; its description, or None when there
        is nothing to run (the run was cancelled, or its plan is gone)."""
        assert job_id is not None
        claimed = await self.jobs.patiently(self.jobs.claim, run_id, agent.label)
        if claimed is None:
            await self.app.job_manager.finish_job_by_id_async(
                job_id, Status.SUCCEEDED, delete_job=True
            )
            return None
        plan_key, _slot, attempt, kind, params = claimed
        spec = self.jobs.spec(plan_key)
        if spec is None:
            await self.end(agent, run_id, ChildResult(1, None, stderr_tail=[
                f"plan {plan_key} is not in the service's configuration any more"]))  # fmt: skip
            return None
        if self.jobs.on_run is not None and kind == spec.kind.value:
            # The plan's ping.start at the agent's claim, as at a worker's (service/jobs.py).
            await self.jobs.on_run(plan_key, "start", str(run_id))
        out: dict[str, Any] = {
            "run_id": str(run_id),
            "kind": kind,
            "plan": plan_key,
            "source": spec.name,
            "attempt": attempt,
            "timeout": spec.timeout,
            "params": params,
        }
        if kind == RunKind.RETENTION.value:
            out["held"] = await self.jobs.patiently(held_snapshots, self.engine, plan_key)
        if kind == RunKind.DRILL.value:  # the service chooses the point, as for its workers
            out["source"] = drill_source(spec)
            out["params"] = {**params, "snapshot": await self.jobs.drill_snapshot(spec, params)}
        if spec.env is not None:
            # A plan made through the API: the agent has no file naming it. Its document
            # holds no credential; their values travel beside it, for the child's
            # environment (the agent never writes them down).
            if not secure:
                await self.end(agent, run_id, ChildResult(1, None, stderr_tail=[
                    f"plan {plan_key} was not sent to agent {agent.label}: its credentials "
                    "do not go over plain HTTP to another machine; serve the API with "
                    "--tls-cert and --tls-key (or behind a TLS proxy)"]))  # fmt: skip
                return None
            try:
                out["config"] = await asyncio.to_thread(Path(spec.config_path).read_text)
                out["env"] = await self.jobs.patiently(spec.env)
            except (OSError, SafeholdError) as exc:
                why = exc.message if isinstance(exc, SafeholdError) else str(exc)
                await self.end(agent, run_id, ChildResult(1, None, stderr_tail=[why]))
                return None
        return out

    def _owned(self, agent: AgentRef, run_id: uuid.UUID) -> tuple[Any, ...]:
        """The run's plan, slot, attempt, kind, state and job if the agent claimed it."""
        with self.engine.connect() as db:
            row = db.execute(
                text(
                    "SELECT p.project || '/' || p.name, r.slot_id, r.attempt, r.kind, r.state, "
                    "r.job_id FROM runs r JOIN plans p ON p.id = r.plan_id "
                    "WHERE r.id = :r AND r.worker = :w"
                ),
                {"r": run_id, "w": agent.label},
            ).one_or_none()
        if row is None:
            raise NotFound(f"no run {run_id} of this agent")
        return tuple(row)

    async def lines(
        self, agent: AgentRef, run_id: uuid.UUID, lines: list[tuple[datetime | None, str, str]]
    ) -> None:
        """Store a running run's log lines (``(at, level, message)``), in order."""
        *_, state, _job = await self.jobs.patiently(self._owned, agent, run_id)
        if state != "running":
            raise Conflict(f"run {run_id} has ended ({state})", hint="stop sending its lines")
        await self.jobs.patiently(self._add_lines, run_id, lines)

    def _add_lines(self, run_id: uuid.UUID, lines: list[tuple[datetime | None, str, str]]) -> None:
        with self.engine.begin() as db:
            start = db.execute(
                text("SELECT coalesce(max(seq) + 1, 0) FROM run_lines WHERE run_id = :r"),
                {"r": run_id},
            ).scalar_one()
            now = utcnow()
            rows = [
                {"run_id": run_id, "seq": start + i, "at": at or now, "level": level,
                 "message": message}
                for i, (at, level, message) in enumerate(lines)
            ]  # fmt: skip
            if rows:
                db.execute(insert(RunLine), rows)

    async def end(self, agent: AgentRef, run_id: uuid.UUID, result: ChildResult) -> bool:
        """End a run from the agent's report of its child; whether this ended it (False:
        it had ended already: cancelled, or reaped as lost)."""
        plan_key, slot_id, attempt, kind, _state, job_id = await self.jobs.patiently(
            self._owned, agent, run_id
        )
        spec = self.jobs.spec(plan_key)
        ended = False
        if spec is not None:
            ended = await self.jobs.finish(spec, run_id, slot_id, attempt, kind, result)
        else:
            gone = Outcome(
                RunState.FAILED, "the plan is not in the configuration any more",
                f"plan {plan_key} is not in the service's configuration any more",
                "add it back to the file, or ignore this run",
            )  # fmt: skip
            ended = await self.jobs.patiently(self.jobs.end_run, run_id, slot_id, gone, None)
        if job_id is not None:
            await self.app.job_manager.finish_job_by_id_async(
                job_id, Status.SUCCEEDED if ended else Status.ABORTED, delete_job=True
            )
        return bool(ended)
