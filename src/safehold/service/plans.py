"""Plans as the service sees them: the configuration's scheduled sources, and their rows.

A :class:`PlanSpec` is everything the scheduler and the workers need of one plan, built
from a validated configuration file (:func:`plans_from_config`). :func:`sync_plans` makes
the catalog agree with the file: a row per plan (``project/name``), its schedule and
settings rewritten from the file on every start and reload. The file stays the source of
truth for what it declares; a pause given at run time (``safehold plan pause``) is the
row's own ``paused`` and survives reloads, so a plan is paused when either says so.

A repository with a ``prune:`` schedule is a plan too, of kind ``prune``: project
``_repository`` (no user's project can start with ``_``), named by the repository's
location without its credentials. Its slots are in the ledger and its runs are shown
like a source's; its jobs hold a lock of their own (:attr:`PlanSpec.lock`), the
repository's, so that two prunes of one repository never overlap while backups, which
do not take it, go on beside a prune.

A repository with a ``verify:`` block is a plan of kind ``verify`` too, in project
``_verify`` under the same name: each run re-reads a slice of the repository's packs
(:mod:`.verify`), under a lock of its own, so that two slices never overlap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import Engine, text

from safehold.catalog import RunKind
from safehold.config import Config
from safehold.policy.schedule import Schedule, parse_schedule
from safehold.policy.slots import DEFAULT_START_WINDOW, PlanRules
from safehold.storage.location import redact

__all__ = [
    "REPOSITORY_PROJECT",
    "VERIFY_PROJECT",
    "WORKER_QUEUE",
    "PlanSpec",
    "agent_queue",
    "plans_from_config",
    "sync_plans",
]

REPOSITORY_PROJECT = "_repository"  # the project of the repositories' prune plans
VERIFY_PROJECT = "_verify"  # the project of the repositories' verification plans

log = logging.getLogger("safehold.service")


WORKER_QUEUE = "default"  # procrastinate's default: the service's own workers take it


def agent_queue(project: str, agent: str) -> str:
    """The queue of the jobs an agent takes (``agent:PROJECT/NAME``)."""
    return f"agent:{project}/{agent}"


@dataclass(frozen=True)
class PlanSpec:
    """One plan: where it comes from, when it runs and what happens around a run."""

    project: str
    name: str  # the source's name in the configuration
    config_path: str  # the file the worker's child process reads the source from
    schedule: Schedule
    paused: bool = False
    min_interval: float | None = None
    on_overlap: Literal["skip", "queue"] = "queue"
    catch_up: Literal["once", "none"] = "once"
    start_window: float | None = None
    retries: int = 0
    retry_delay: float = 60.0
    timeout: float | None = None
    retention: bool = False  # a retention: block: forget runs after each successful backup
    # The repository's location (a prune plan's lock is named after it).
    repository: str = ""
    # (location, max_concurrent_jobs) of the repository and each destination with a limit:
    # a run holds a slot of each while it writes.
    limits: tuple[tuple[str, int], ...] = ()
    agent: str | None = None  # the agent that runs it on its machine (None: the workers)
    kind: RunKind = RunKind.BACKUP  # BACKUP: a source's plan; PRUNE: a repository's
    max_unused: str | None = None  # a prune plan's ``prune --max-unused``
    verify_period: str | None = None  # a verify plan's period (``30d``), as forget's spans
    verify_margin: float = 1.25  # a verify plan's slices read this much over their share
    rpo_target: float | None = None  # seconds: older newest point is an RPO breach (alerts)
    # An API plan's secret environment for its child (its destinations' credentials,
    # which its generated configuration file names as ${SAFEHOLD_SECRET_N}): called when a
    # run starts, so that nothing secret is kept in the spec. None: a file plan.
    env: Callable[[], Mapping[str, str]] | None = field(default=None, compare=False, repr=False)
    origin: str = "file"  # 'api': made through the service (service/api_plans.py)

    @property
    def key(self) -> str:
        """``project/name``: the plan's identity in the ledger, the logs and the queue."""
        return f"{self.project}/{self.name}"

    @property
    def queue(self) -> str:
        """The procrastinate queue of the plan's jobs: its agent's own, or the workers'."""
        if self.agent is not None:
            return agent_queue(self.project, self.agent)
        return WORKER_QUEUE

    @property
    def lock(self) -> str:
        """procrastinate's lock for the plan's jobs: one job holding it runs at a time.

        A source's plan locks its own key; a prune locks its repository (prefixed, so
        that a local repository at a relative path such as ``default/db`` cannot take a
        plan's lock).
        """
        if self.kind is RunKind.PRUNE:
            return f"repository:{self.name}"
        if self.kind is RunKind.VERIFY:
            return f"verify:{self.name}"
        return self.key

    def rules(self, *, paused: bool = False) -> PlanRules:
        """The slot rule's view of this plan; ``paused`` adds a run-time pause."""
        return PlanRules(
            key=self.key,
            schedule=self.schedule,
            paused=self.paused or paused,
            min_interval=_span(self.min_interval),
            on_overlap=self.on_overlap,
            catch_up=self.catch_up,
            start_window=_span(self.start_window) or DEFAULT_START_WINDOW,
        )

    def retry_in(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (the delay doubles each time)."""
        return float(self.retry_delay * 2 ** max(0, attempt - 1))

    def settings(self) -> dict[str, Any]:
        """What the catalog row records of the file's settings (shown by ``plans``)."""
        return {
            "paused": self.paused,
            "min_interval": self.min_interval,
            "on_overlap": self.on_overlap,
            "catch_up": self.catch_up,
            "start_window": self.start_window,
            "retries": self.retries,
            "retry_delay": self.retry_delay,
            "timeout": self.timeout,
            "retention": self.retention,
            "config": self.config_path,
            "kind": self.kind.value,
            "agent": self.agent,
            "max_unused": self.max_unused,
            "rpo_target": self.rpo_target,
            **({"period": self.verify_period} if self.kind is RunKind.VERIFY else {}),
        }


def _span(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def plans_from_config(config: Config) -> dict[str, PlanSpec]:
    """The file's plans (sources with a ``schedule``), keyed ``project/name``."""
    out: dict[str, PlanSpec] = {}
    limits = tuple(
        (place.location, place.max_concurrent_jobs)
        for place in (config.repository, *config.destinations)
        if place is not None and place.max_concurrent_jobs is not None
    )
    for name, source in config.plans.items():
        common = source.common
        assert common.schedule is not None
        key = f"{common.project}/{name}"
        out[key] = PlanSpec(
            project=common.project,
            name=name,
            agent=common.agent,
            config_path=config.path,
            schedule=parse_schedule(common.schedule, key=key, timezone=common.timezone),
            paused=common.paused,
            min_interval=common.min_interval,
            on_overlap=common.overlap,
            catch_up=common.catch_up,
            start_window=common.start_window,
            retries=common.retries,
            retry_delay=common.retry_delay,
            timeout=common.timeout,
            retention=common.retention is not None,
            repository=config.repository.location if config.repository else "",
            limits=limits,
            rpo_target=common.rpo_target,
        )
    if config.repository is not None and config.repository.prune is not None:
        prune = config.repository.prune
        spec = PlanSpec(
            project=REPOSITORY_PROJECT,
            name=redact(config.repository.location),
            config_path=config.path,
            schedule=parse_schedule(
                prune.schedule,
                key=f"{REPOSITORY_PROJECT}/{redact(config.repository.location)}",
                timezone=prune.timezone,
            ),
            paused=prune.paused,
            on_overlap="skip",  # a prune still going when the next is due is enough
            timeout=prune.timeout,
            retries=prune.retries,
            retry_delay=prune.retry_delay,
            repository=config.repository.location,
            kind=RunKind.PRUNE,
            max_unused=prune.max_unused,
        )
        out[spec.key] = spec
    if config.repository is not None and config.repository.verify is not None:
        verify = config.repository.verify
        name = redact(config.repository.location)
        spec = PlanSpec(
            project=VERIFY_PROJECT,
            name=name,
            config_path=config.path,
            schedule=parse_schedule(
                verify.schedule, key=f"{VERIFY_PROJECT}/{name}", timezone=verify.timezone
            ),
            paused=verify.paused,
            on_overlap="skip",  # a slice still reading when the next is due is enough
            timeout=verify.timeout,
            retries=verify.retries,
            retry_delay=verify.retry_delay,
            repository=config.repository.location,
            kind=RunKind.VERIFY,
            verify_period=verify.period,
            verify_margin=verify.margin,
        )
        out[spec.key] = spec
    # Restore drills on their own schedules (service/drills.py), imported here because
    # that module builds on PlanSpec.
    from safehold.service.drills import drill_plans

    out.update(drill_plans(config, limits))
    return out


def sync_plans(engine: Engine, specs: Iterable[PlanSpec]) -> dict[str, int]:
    """Write the file's plans into the catalog; their row ids, keyed ``project/name``.

    Safe when several processes start at once with the same file: each row is an upsert
    on ``(project, name)``.
    """
    rows = list(specs)
    if not rows:
        return {}
    with engine.begin() as db:
        found = db.execute(
            _UPSERT_PLANS,
            {
                "project": [spec.project for spec in rows],
                "name": [spec.name for spec in rows],
                "schedule": [spec.schedule.expression for spec in rows],
                "timezone": [spec.schedule.timezone for spec in rows],
                "settings": [json.dumps(spec.settings()) for spec in rows],
            },
        ).all()
    ids = {f"{project}/{name}": plan_id for plan_id, project, name in found}
    for spec in rows:
        if spec.key not in ids:
            # An API plan had the name first: the file's plan is not run (a file plan must
            # not silently take over a plan someone made through the API).
            log.error("plan %s: the name belongs to a plan made through the API; the "
                      "file's plan of that name does not run (rename one)", spec.key)  # fmt: skip
    return ids


# One statement for all the file's plans, their columns as arrays (10,000 plans: one
# round trip instead of 10,000).
_UPSERT_PLANS = text(
    """
    INSERT INTO plans (project, name, origin, source, schedule, timezone, settings)
    SELECT p.project, p.name, 'file', p.name, p.schedule, p.timezone, p.settings::jsonb
    FROM unnest(CAST(:project AS text[]), CAST(:name AS text[]), CAST(:schedule AS text[]),
                CAST(:timezone AS text[]), CAST(:settings AS text[]))
         AS p(project, name, schedule, timezone, settings)
    ON CONFLICT (project, name) DO UPDATE SET
      origin = excluded.origin, source = excluded.source, schedule = excluded.schedule,
      timezone = excluded.timezone, settings = excluded.settings, updated_at = now()
    WHERE plans.origin = 'file'
    RETURNING id, project, name
    """
)
