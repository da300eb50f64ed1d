"""``safehold serve``: the scheduler tick and the workers, in one long-running process.

One process holds, on one event loop:

- a **procrastinate worker** running up to ``workers`` jobs at once (each in a child
  process, :mod:`.child`), heart-beating every 5 seconds;
- a **heartbeat** in the catalog's ``workers`` table every 5 seconds (:mod:`.workers`);
- the **scheduler** (unless ``scheduler=False``: a worker-only process for an extra
  machine): every ``tick_interval`` it ticks (:mod:`.tick`), queues the new runs' jobs,
  and, every few ticks, re-queues orphaned runs and reaps the runs of lost workers.

Any number of such processes may share one database; any of them may stop at any moment.
``stop`` (set by SIGTERM or SIGINT) ends the loop: the scheduler stops at once, the worker
stops taking jobs and waits ``stop_grace`` seconds for the running ones, then kills them
(their runs end as failed, "the service stopped", and are retried per the plan). ``reload``
(SIGHUP, or ``safehold serve --reload``) reads the configuration file again and applies
it between two ticks without touching running jobs.

The plans made through the service (:mod:`.api_plans`), with their drill plans, are read
from the catalog beside the file's, and again whenever a cheap look at ``plans`` and
``destinations`` (counts, newest ``updated_at``) every :data:`API_PLANS_EVERY` seconds
sees a change; the file's plans are not touched by that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from procrastinate import App, PsycopgConnector
from sqlalchemy import text

from safehold import runtime
from safehold.catalog import RunKind
from safehold.clock import SYSTEM_CLOCK, Clock
from safehold.config import Config, load_config
from safehold.service.alerts_run import Alerter
from safehold.service.api_plans import PlanCache, drill_rows, plans_from_catalog
from safehold.service.cluster import default_state_dir
from safehold.service.database import Database, open_database
from safehold.service.jobs import FENCE_SECONDS, STALL_SECONDS, Jobs, register
from safehold.service.plans import WORKER_QUEUE, PlanSpec, plans_from_config, sync_plans
from safehold.service.reports import report_loop
from safehold.service.tick import TickState, orphaned_runs, tick
from safehold.service.vault import Vault, key_file_path
from safehold.service.workers import beat, register_worker, stopped

__all__ = ["Companion", "ServeOptions", "Service", "serve"]

log = logging.getLogger("safehold.service")

ORPHAN_GRACE = timedelta(seconds=30)  # a run queued this long with no job gets one
HOUSEKEEPING_EVERY = 5.0  # seconds between re-queueing orphans and reaping lost workers
API_PLANS_EVERY = 5.0  # seconds between looks for changed API plans and destinations


@dataclass
class ServeOptions:
    """How ``safehold serve`` was asked to run."""

    config_path: str
    database: str | None = None  # None: the private cluster under state_dir
    state_dir: Path | None = None
    workers: int = 2
    scheduler: bool = True
    tick_interval: float = 1.0
    stop_grace: float = 60.0
    clock: Clock = field(default=SYSTEM_CLOCK)
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


class Service:
    """The running service: its plans, its database and its loop."""

    def __init__(
        self,
        options: ServeOptions,
        config: Config,
        database: Database,
        app: App,
        state_dir: Path,
    ) -> None:
        self.options = options
        self.engine = database.engine
        self.app = app
        self.specs: Mapping[str, PlanSpec] = {}  # the file's and the API's, merged
        self.ids: Mapping[str, int] = {}
        self.file_specs: Mapping[str, PlanSpec] = {}
        self.file_ids: Mapping[str, int] = {}
        # The plans made through the service; the key opens their destinations.
        self.state_dir = state_dir
        self.vault = Vault(self.engine, key_file_path(config.service.key_file, state_dir))
        self.api_specs: Mapping[str, PlanSpec] = {}
        self.api_ids: Mapping[str, int] = {}
        self.api_stamp: object = None
        self.api_cache: PlanCache = {}  # a changed plan is built again, not all of them
        self._api_lock = threading.Lock()  # the loop's look, and a worker's lookup (_Plans)
        self.jobs = Jobs(
            app,
            self.engine,
            plans=lambda: _Plans(self),
            state_dir=state_dir,
            worker=options.name,
            conninfo=database.conninfo,
            clock=options.clock,
        )
        # Alerts (service/alerts_run.py): evaluated beside the scheduler; the workers
        # queue the plans' pings at each run's start and end.
        self.alerter = Alerter(self.engine, options.clock)
        self.jobs.on_run = self.alerter.ping
        self.apply(config)
        self.refresh_api_plans()
        self.reload_requested = False
        self.restart_worker = asyncio.Event()  # set when the database is back after a fence
        self.tick_failing = False

    def apply(self, config: Config) -> None:
        """Take the plans of ``config`` (at start and on reload)."""
        specs = plans_from_config(config)
        self.alerter.configure(config)
        self.reports_config = config.reports  # the report cycle reads it (service/reports.py)
        self.file_ids = sync_plans(self.engine, specs.values())
        self.file_specs = specs
        self._merge()
        log.info("plans: %s", ", ".join(sorted(specs)) or "none")

    def _merge(self) -> None:
        # An API plan wins a name clash: sync_plans leaves its row alone (and says so).
        self.specs = {**self.file_specs, **self.api_specs}
        self.ids = {**self.file_ids, **self.api_ids}
        self.tick_state = TickState()  # schedules may have changed: forget next slots

    def refresh_api_plans(self) -> bool:
        """Read the API plans again if the catalog's plans or destinations changed since
        the last read; whether it did."""
        with self._api_lock:
            return self._refresh_api_plans()

    def _refresh_api_plans(self) -> bool:
        with self.engine.connect() as db:
            stamp = tuple(db.execute(_API_STAMP).one())
            if stamp == self.api_stamp:
                return False
            rows = db.execute(
                text("SELECT id, project, name FROM plans WHERE origin = 'api'")
            ).all()
        specs = plans_from_catalog(self.engine, self.vault, self.state_dir, cache=self.api_cache)
        ids = {f"{r.project}/{r.name}": r.id for r in rows}
        # The drill plan of a plan made before drills got rows of their own: its row now.
        missing = [s for k, s in specs.items() if k not in ids and s.kind is RunKind.DRILL]
        if missing:
            ids.update(drill_rows(self.engine, missing))
        self.api_ids = {key: plan_id for key, plan_id in ids.items() if key in specs}
        self.api_specs = specs
        self.api_stamp = stamp
        self._merge()
        log.info("API plans: %s", ", ".join(sorted(specs)) or "none")
        return True

    async def api_plans(self, stop: asyncio.Event) -> None:
        """Follow the API plans until ``stop`` (in every process: a worker-only one runs
        them too)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=API_PLANS_EVERY)
            if stop.is_set():
                return
            try:
                await asyncio.to_thread(self.refresh_api_plans)
            except Exception as exc:  # the database went away: the next look tries again
                log.warning("reading the API plans failed: %s", exc)

    def reload(self) -> None:
        """Read the configuration file again; a broken file keeps the plans as they were."""
        try:
            config = load_config(self.options.config_path)
        except Exception as exc:  # a reload must never take the service down
            log.error("reload: %s; keeping the plans as they were", exc)
            return
        self.apply(config)

    async def scheduler(self, stop: asyncio.Event) -> None:
        """Tick until ``stop``; housekeeping every few seconds."""
        last_housekeeping = 0.0
        while not stop.is_set():
            if self.reload_requested:
                self.reload_requested = False
                await asyncio.to_thread(self.reload)
            await self.tick_once()
            clock = self.options.clock
            if clock.monotonic() - last_housekeeping >= HOUSEKEEPING_EVERY:
                last_housekeeping = clock.monotonic()
                await self.housekeeping()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.options.tick_interval)

    async def tick_once(self) -> int:
        """One tick and the queueing of its runs; how many runs it queued."""
        now = self.options.clock.now()
        try:
            result = await asyncio.to_thread(
                tick, self.engine, self.specs, self.ids, now, self.tick_state
            )
        except Exception as exc:  # the database went away: try again next tick
            if not self.tick_failing:  # once per outage, not twice a second
                log.warning("ticks fail until the database answers: %s", exc)
            self.tick_failing = True
            return 0
        if self.tick_failing:
            log.info("ticks work again")
            self.tick_failing = False
        for run in result.new_runs:
            await self.jobs.defer(run.run_id, run.plan_key)
        return len(result.new_runs)

    async def housekeeping(self) -> None:
        """Queue orphaned runs again and end the runs of lost workers."""
        try:
            now = self.options.clock.now()
            for run_id in await asyncio.to_thread(orphaned_runs, self.engine, now, ORPHAN_GRACE):
                key = await asyncio.to_thread(self._plan_key, run_id)
                if key is not None:
                    await self.jobs.defer(run_id, key)
            await self.jobs.reap()
        except Exception as exc:
            log.warning("housekeeping failed: %s", exc)

    def _plan_key(self, run_id: object) -> str | None:
        with self.engine.connect() as db:
            row = db.execute(
                text(
                    "SELECT p.project, p.name FROM runs r JOIN plans p ON p.id = r.plan_id "
                    "WHERE r.id = :r"
                ),
                {"r": run_id},
            ).one_or_none()
        return None if row is None else f"{row[0]}/{row[1]}"

    async def heartbeat(self, stop: asyncio.Event) -> None:
        """Move this process's ``heartbeat_at`` in ``workers`` until ``stop``.

        Its own loop, not the scheduler's housekeeping: a worker-only process
        (``--no-scheduler``) has no scheduler but must still be seen alive.
        """
        last_ok = time.monotonic()
        fenced = False
        while not stop.is_set():
            try:
                await asyncio.to_thread(beat, self.engine, self.options.name)
                if fenced:
                    self.restart_worker.set()
                last_ok, fenced = time.monotonic(), False
            except Exception as exc:  # the database went away: the next beat tries again
                log.warning("heartbeat failed: %s", exc)
                if not fenced and time.monotonic() - last_ok >= FENCE_SECONDS:
                    fenced = True
                    killed = self.jobs.fence()
                    log.error(
                        "no database for %.0f s: the other processes will run this one's "
                        "jobs again; %d running job(s) killed so that none runs twice",
                        FENCE_SECONDS, killed,
                    )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=HOUSEKEEPING_EVERY)

    def _start_worker(self) -> asyncio.Task[None]:
        return asyncio.create_task(
            self.app.run_worker_async(
                name=self.options.name,
                # Only the workers' queue: an agent's jobs wait for that agent.
                queues=[WORKER_QUEUE],
                concurrency=self.options.workers,
                install_signal_handlers=False,
                additional_context={"jobs": self.jobs},
                update_heartbeat_interval=5.0,
                stalled_worker_timeout=STALL_SECONDS,
                shutdown_graceful_timeout=self.options.stop_grace,
                delete_jobs="successful",
            ),
            name="worker",
        )

    async def run(self, stop: asyncio.Event, companions: Sequence[Companion] = ()) -> None:
        """Run the worker and the scheduler (and ``companions``) until ``stop`` is set.
        After the database was away long enough to stop the jobs (a fence), the queue's
        worker is started again, so that it registers anew with a fresh heartbeat before it
        takes more jobs."""
        tasks = [asyncio.create_task(self.heartbeat(stop), name="heartbeat")]
        tasks.append(asyncio.create_task(self.api_plans(stop), name="api-plans"))
        tasks += [asyncio.create_task(run(self, stop), name="companion") for run in companions]
        if self.options.scheduler:
            tasks.append(asyncio.create_task(self.scheduler(stop), name="scheduler"))
            tasks.append(asyncio.create_task(self.alerter.run(stop), name="alerts"))
            tasks.append(asyncio.create_task(report_loop(self, stop), name="reports"))
        worker = self._start_worker() if self.options.workers > 0 else None
        stopper = asyncio.create_task(stop.wait())
        while True:
            restart = asyncio.create_task(self.restart_worker.wait())
            waiting = [stopper, restart, *tasks, *([worker] if worker else [])]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not restart.done() or stopper.done() or worker is None:
                restart.cancel()
                break
            self.restart_worker.clear()
            log.info("the database is back: starting the queue's worker again")
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            worker = self._start_worker()
        if worker is not None:
            tasks.append(worker)
        for task in tasks:
            if not task.done():
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        stopper.cancel()
        for result in results:
            if isinstance(result, Exception):
                raise result


class _Plans(Mapping[str, PlanSpec]):
    """The service's plans as its workers look them up: a plan they do not know is read
    again from the catalog first (it was made through the API a moment ago and another
    process ticked it before this one's next look), then looked up once more."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def __getitem__(self, key: str) -> PlanSpec:
        try:
            return self.service.specs[key]
        except KeyError:
            pass
        try:
            # Rare (a new API plan, or a run of a plan gone): a short blocking read is
            # simpler than making every lookup awaitable.
            self.service.refresh_api_plans()
        except Exception as exc:
            log.warning("reading the API plans failed: %s", exc)
        return self.service.specs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.service.specs)

    def __len__(self) -> int:
        return len(self.service.specs)


# Whether an API plan or a destination changed: one index-free pass over two small tables.
_API_STAMP = text(
    "SELECT (SELECT count(*) FROM plans WHERE origin = 'api'), "
    "(SELECT max(updated_at) FROM plans WHERE origin = 'api'), "
    "(SELECT coalesce(sum(id), 0) FROM plans WHERE origin = 'api'), "
    "(SELECT count(*) FROM destinations), (SELECT max(updated_at) FROM destinations)"
)


# A task run beside the service on its loop until the stop event is set (the REST API, which
# the command line composes: the service imports nothing above it).
Companion = Callable[[Service, asyncio.Event], Coroutine[Any, Any, None]]


async def serve(
    options: ServeOptions,
    *,
    ready: Callable[[Service], None] | None = None,
    companions: Sequence[Companion] = (),
) -> None:
    """Run the service until SIGTERM or SIGINT; SIGHUP reloads the configuration.
    ``companions`` run beside it on its loop until it stops."""
    config = load_config(options.config_path)
    state_dir = options.state_dir or (
        Path(config.service.state_dir) if config.service.state_dir else default_state_dir()
    )
    database = options.database or (
        config.service.database.get_secret_value() if config.service.database else None
    )
    with open_database(database, state_dir) as db:
        app = App(connector=PsycopgConnector(conninfo=db.conninfo))
        register(app)
        async with app.open_async():
            service = Service(options, config, db, app, state_dir)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: _request_reload(service))
            await asyncio.to_thread(
                register_worker, db.engine, options.name, socket.gethostname(), os.getpid()
            )
            log.info("serving (database %s, %d workers)", db.display_url, options.workers)
            if ready is not None:
                ready(service)
            runtime.settled()  # the plans are made: leave them out of the collector
            try:
                await service.run(stop, companions)
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            try:  # a clean stop only: a process that failed keeps its row as it was
                await asyncio.to_thread(stopped, db.engine, options.name)
            except Exception as exc:
                log.warning("could not record the stop in workers: %s", exc)


def _request_reload(service: Service) -> None:
    service.reload_requested = True
