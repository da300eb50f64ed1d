"""The scheduler's decision: which of a plan's slots run, which are skipped, which missed.

The service keeps a ledger with one row per slot a plan's schedule asks for (plan, slot
time: unique). Each tick it asks :func:`decide_slots` what to do with the slots that fell
due since the newest row, given what the ledger says of the plan now (runs still going,
the last successful run) and ``now``; it inserts the answer, and only the process whose
insert created a row queues that row's job. This module is the whole rule; it reads no
clock and no database, so days of schedule time can be tested in microseconds.

The rules, in the order they apply to a slot:

1. **Start window.** A slot may start until its window closes: the next slot, or
   ``start_window`` after it (one hour by default), whichever is first. A slot whose
   window closed before any tick saw it (everything was down) is *missed*.
2. **Catch-up.** After a downtime only one run makes up for the missed slots, never one
   per slot: with ``catch_up: once`` (the default) the newest missed slot runs (trigger
   ``catch_up``) unless a slot still in its window runs anyway; with ``catch_up: none``
   missed slots only stay recorded.
3. **Paused.** A paused plan's slots are skipped ("paused"), never missed.
4. **Overlap.** While a run of the plan is going, ``on_overlap: skip`` (service-backup's
   ``exit_if_in_progress``) skips the slot; ``on_overlap: queue`` queues one run behind
   it, and skips further slots while that one waits.
5. **Minimum interval** (staffeln's ``backup_min_interval``): a slot that comes less than
   ``min_interval`` after the start of the last run that is going or succeeded is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from safehold import units
from safehold.policy.schedule import Schedule

__all__ = [
    "DEFAULT_START_WINDOW",
    "PlanFacts",
    "PlanRules",
    "SlotDecision",
    "SlotState",
    "decide_slots",
    "plan_tick",
    "slots_left_out",
    "start_window_end",
]

DEFAULT_START_WINDOW = timedelta(hours=1)


class SlotState(StrEnum):
    """Where a ledger row stands; the last five are final."""

    QUEUED = "queued"  # its job waits for a worker
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"  # with a reason: paused, overlap, min_interval, check said no
    MISSED = "missed"  # nothing ran it within its start window


@dataclass(frozen=True)
class PlanRules:
    """What a plan's configuration says about when it runs."""

    key: str  # "project/name": the ledger's plan identity
    schedule: Schedule
    paused: bool = False
    min_interval: timedelta | None = None
    on_overlap: Literal["skip", "queue"] = "queue"
    catch_up: Literal["once", "none"] = "once"
    start_window: timedelta = DEFAULT_START_WINDOW


@dataclass(frozen=True)
class PlanFacts:
    """What the ledger says of a plan when the tick looks.

    ``since`` is the newest slot already in the ledger, or the moment the plan was first
    registered when it has none: slots at or before it are never decided again.
    """

    since: datetime
    running: int = 0  # runs started and not ended
    waiting: int = 0  # runs queued and not started
    # The start of the newest run that is going or succeeded (min_interval counts from it:
    # a run under way counts, or a slot queued behind it would come too soon).
    last_start: datetime | None = None


@dataclass(frozen=True)
class SlotDecision:
    """One new ledger row: its slot time, first state, reason and what queued it."""

    slot_at: datetime
    state: SlotState
    reason: str | None = None
    trigger: Literal["schedule", "catch_up"] = "schedule"

    @property
    def queues_a_run(self) -> bool:
        """Whether the process that inserts this row must queue a job for it."""
        return self.state is SlotState.QUEUED


def start_window_end(
    rules: PlanRules, slot_at: datetime, next_slot: datetime | None = None
) -> datetime:
    """When ``slot_at`` stops being startable: its next slot or its window, the earlier
    (``next_slot``, when the caller knows it, saves the schedule search)."""
    if next_slot is None:
        next_slot = rules.schedule.next_after(slot_at)
    return min(next_slot, slot_at + rules.start_window)


def decide_slots(
    rules: PlanRules, facts: PlanFacts, now: datetime, *, limit: int = 10_000
) -> list[SlotDecision]:
    """The ledger rows to add for the slots in ``(facts.since, now]``, oldest first.

    At most ``limit`` rows come back (the newest ones): a plan that fires every second
    and was down for a week would otherwise ask for 600,000 rows in one tick. The rows
    left out are older than those returned, so no later tick sees them either; the tick
    logs a plan that reached the limit (:func:`slots_left_out` says whether one would).
    """
    return plan_tick(rules, facts, now, limit=limit)[0]


def plan_tick(
    rules: PlanRules,
    facts: PlanFacts,
    now: datetime,
    *,
    limit: int = 10_000,
    first_due: datetime | None = None,
) -> tuple[list[SlotDecision], datetime]:
    """:func:`decide_slots`, and the plan's next slot after the rows decided (when the
    next tick should look at it again). ``first_due``, the first slot after
    ``facts.since`` if the caller knows it, saves a schedule search: the usual tick finds
    one slot due and searches only for the one after it."""
    schedule = rules.schedule
    due: list[datetime] = []
    following: datetime | None = None
    if first_due is not None and first_due > facts.since:
        slot = first_due
        while slot <= now and len(due) < limit:
            due.append(slot)
            slot = schedule.next_after(slot)
        following = slot
        if slot <= now:  # more than limit: keep the newest ones instead
            due, following = [], None
    if following is None:
        due, _ = schedule.recent_slots(facts.since, now, limit)
        following = schedule.next_after(due[-1] if due else facts.since)
    ends = [
        start_window_end(rules, slot, due[i + 1] if i + 1 < len(due) else following)
        for i, slot in enumerate(due)
    ]
    past = [slot for slot, end in zip(due, ends, strict=True) if end <= now]
    current = [slot for slot, end in zip(due, ends, strict=True) if end > now]
    decisions: list[SlotDecision] = []
    catch_up_slot = None
    if past and not current and rules.catch_up == "once" and not rules.paused:
        catch_up_slot = past[-1]
    waiting = facts.waiting
    for slot in past:
        if rules.paused:
            decisions.append(SlotDecision(slot, SlotState.SKIPPED, "paused"))
        elif slot == catch_up_slot:
            decision = _runnable(rules, facts, slot, waiting, trigger="catch_up")
            waiting += decision.queues_a_run
            decisions.append(decision)
        else:
            decisions.append(
                SlotDecision(slot, SlotState.MISSED, "no process ran it in its start window")
            )
    for slot in current:
        decision = _runnable(rules, facts, slot, waiting, trigger="schedule")
        waiting += decision.queues_a_run
        decisions.append(decision)
    return decisions, following


def _runnable(
    rules: PlanRules,
    facts: PlanFacts,
    slot: datetime,
    waiting: int,
    *,
    trigger: Literal["schedule", "catch_up"],
) -> SlotDecision:
    if rules.paused:
        return SlotDecision(slot, SlotState.SKIPPED, "paused", trigger)
    if facts.running or waiting:
        if rules.on_overlap == "skip":
            return SlotDecision(
                slot, SlotState.SKIPPED, "overlap: the previous run is still going", trigger
            )
        if waiting:
            return SlotDecision(
                slot, SlotState.SKIPPED, "overlap: a run is already queued", trigger
            )
    if rules.min_interval is not None and facts.last_start is not None:
        since_last = slot - facts.last_start
        if since_last < rules.min_interval:
            return SlotDecision(
                slot,
                SlotState.SKIPPED,
                f"min_interval: the last run started "
                f"{units.duration(since_last.total_seconds())} before (min_interval "
                f"{units.duration(rules.min_interval.total_seconds())})",
                trigger,
            )
    return SlotDecision(slot, SlotState.QUEUED, None, trigger)


def slots_left_out(rules: PlanRules, facts: PlanFacts, now: datetime, limit: int) -> bool:
    """Whether :func:`decide_slots` with this ``limit`` leaves older due slots out."""
    return rules.schedule.recent_slots(facts.since, now, limit)[1]
