"""Which of a source's slots the standalone agent runs: the service's slot rule, no ledger.

The agent asks :func:`safehold.policy.slots.plan_tick` exactly as the service's tick does
(start window, one catch-up after a downtime, paused, overlap, ``min_interval``); only
the facts come from elsewhere: ``since`` from the state file (the newest slot decided),
the run going and the run waiting from the agent's own memory, the last start from the
state file. Nothing here reads a clock or a file, so the rule's tests need no process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from safehold.agent.state import SourceState
from safehold.config import Config
from safehold.policy.schedule import Schedule, parse_schedule
from safehold.policy.slots import (
    DEFAULT_START_WINDOW,
    PlanFacts,
    PlanRules,
    SlotDecision,
    plan_tick,
)

__all__ = ["SLOTS_PER_LOOK", "AgentPlan", "Due", "agent_plans", "due_slots"]

# Slots one look may decide for one source: a source every second, down for a week, would
# otherwise ask for 600,000 decisions, all but one of them "missed".
SLOTS_PER_LOOK = 1_000


@dataclass(frozen=True)
class AgentPlan:
    """One scheduled source as the agent runs it."""

    name: str  # the source's name in the file
    key: str  # project/name: the schedule's spread and the logs' ``plan``
    rules: PlanRules
    retries: int = 0
    retry_delay: float = 60.0
    timeout: float | None = None
    retention: bool = False  # a retention: block: forget after each successful backup
    exit_if_in_progress: bool = False
    identifier: str = ""  # the file's identifier: key (identifier_command's output: per run)

    @property
    def schedule(self) -> Schedule:
        """The source's schedule."""
        return self.rules.schedule

    def retry_in(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (doubled each time, as the
        service does)."""
        return float(self.retry_delay * 2 ** max(0, attempt - 1))


def _span(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def agent_plans(config: Config) -> dict[str, AgentPlan]:
    """The file's scheduled sources, keyed by source name (the repository's ``prune:``
    schedule is the service's: the agent does not prune)."""
    out: dict[str, AgentPlan] = {}
    for name, source in config.plans.items():
        common = source.common
        assert common.schedule is not None
        key = f"{common.project}/{name}"
        rules = PlanRules(
            key=key,
            schedule=parse_schedule(common.schedule, key=key, timezone=common.timezone),
            paused=common.paused,
            min_interval=_span(common.min_interval),
            on_overlap=common.overlap,
            catch_up=common.catch_up,
            start_window=_span(common.start_window) or DEFAULT_START_WINDOW,
        )
        out[name] = AgentPlan(
            name=name,
            key=key,
            rules=rules,
            retries=common.retries,
            retry_delay=common.retry_delay,
            timeout=common.timeout,
            retention=common.retention is not None,
            exit_if_in_progress=common.exit_if_in_progress,
            identifier=common.identifier or "",
        )
    return out


@dataclass(frozen=True)
class Due:
    """One look at a source: the slots decided (oldest first), the new ``since`` to write
    (None: nothing was decided), and the next slot to look again at."""

    decisions: list[SlotDecision]
    since: datetime | None
    next_slot: datetime
    left_out: bool = False  # older due slots were not decided (more than SLOTS_PER_LOOK)


def due_slots(
    plan: AgentPlan,
    state: SourceState,
    now: datetime,
    *,
    running: bool,
    waiting: int,
    next_slot: datetime | None = None,
) -> Due:
    """The decisions for the slots in ``(state.since, now]``. ``running``: a run of the
    source is going; ``waiting``: runs queued behind it or waiting for a retry.
    ``state.since`` must be set (the agent sets it when it first sees a source)."""
    assert state.since is not None, "a source's since is set when the agent first sees it"
    facts = PlanFacts(
        since=state.since, running=int(running), waiting=waiting, last_start=state.last_start
    )
    decisions, following = plan_tick(
        plan.rules,
        facts,
        now,
        limit=SLOTS_PER_LOOK,
        first_due=next_slot if next_slot is not None and next_slot > state.since else None,
    )
    since = decisions[-1].slot_at if decisions else None
    return Due(decisions, since, following, len(decisions) == SLOTS_PER_LOOK)
