"""The scheduler's tick: turn each plan's due slots into ledger rows, exactly once.

Every ``safehold serve`` with a scheduler ticks (every second by default). A tick:

1. takes a transaction-level advisory lock without waiting (``pg_try_advisory_xact_lock``):
   when another process is ticking, this one skips its turn; the lock is a convenience
   that saves work, the ledger's ``UNIQUE (plan_id, slot_at)`` is the guarantee;
2. reads what the ledger says of every plan in one query (newest slot, runs going and
   waiting, start of the last success);
3. asks :func:`safehold.policy.slots.decide_slots` for each plan whose next slot is due;
4. inserts the rows with ``ON CONFLICT DO NOTHING`` and, for each row it created in the
   ``queued`` state, a run row, in the same transaction.

The caller then queues a job for each new run (:class:`TickResult.new_runs`). A process
that dies between the commit and the queueing leaves runs ``queued`` with no job; every
tick queues those again after a grace period (:func:`orphaned_runs`). A run that gets two
jobs that way is still run once: the job claims its run (``queued`` -> ``running``) and a
second job finds nothing to claim.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, text
from sqlalchemy.dialects.postgresql import insert

from safehold.catalog import Run, RunKind, RunState, Slot
from safehold.policy.slots import PlanFacts, SlotDecision, decide_slots
from safehold.service.plans import PlanSpec

__all__ = ["TICK_LOCK", "NewRun", "TickResult", "orphaned_runs", "tick"]

# "safetick" in ASCII, its top bit cleared: the advisory lock one ticking process holds.
TICK_LOCK = 0x7361666574_69636B
# Rows one plan may add in one tick (a plan that fires every second, down for a week).
ROWS_PER_PLAN = 10_000

_FACTS = text(
    """
    SELECT p.id, p.paused, p.created_at,
      (SELECT max(s.slot_at) FROM slots s WHERE s.plan_id = p.id) AS newest_slot,
      (SELECT count(*) FROM runs r WHERE r.plan_id = p.id AND r.kind = 'backup'
         AND r.state = 'running') AS running,
      (SELECT count(*) FROM runs r WHERE r.plan_id = p.id AND r.kind = 'backup'
         AND r.state = 'queued') AS waiting,
      (SELECT max(r.started_at) FROM runs r WHERE r.plan_id = p.id AND r.kind = 'backup'
         AND r.state = 'succeeded') AS last_success
    FROM plans p WHERE p.id = ANY(:ids)
    """
)


@dataclass(frozen=True)
class NewRun:
    """A run the tick created: the caller queues its job."""

    run_id: uuid.UUID
    plan_key: str
    slot_at: datetime | None


@dataclass
class TickResult:
    """What one tick did; ``ticked`` is False when another process held the tick."""

    ticked: bool
    slots: int = 0  # rows added to the ledger
    new_runs: list[NewRun] = field(default_factory=list)


def tick(
    engine: Engine, specs: Mapping[str, PlanSpec], ids: Mapping[str, int], now: datetime
) -> TickResult:
    """One tick over the plans ``specs`` (keyed ``project/name``; ``ids`` their rows)."""
    with engine.begin() as db:
        got = db.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": TICK_LOCK})
        if not got.scalar():
            return TickResult(ticked=False)
        by_id = {ids[key]: spec for key, spec in specs.items() if key in ids}
        rows = db.execute(_FACTS, {"ids": list(by_id)}).all()
        result = TickResult(ticked=True)
        for plan_id, paused, created_at, newest, running, waiting, last_success in rows:
            spec = by_id[plan_id]
            since = newest or created_at
            if spec.schedule.next_after(since) > now:
                continue  # the common case: nothing due for this plan
            facts = PlanFacts(
                since=since, running=running, waiting=waiting, last_success_start=last_success
            )
            decisions = decide_slots(spec.rules(paused=paused), facts, now, limit=ROWS_PER_PLAN)
            _record(db, plan_id, spec, decisions, result)
        return result


def _record(
    db: Connection,
    plan_id: int,
    spec: PlanSpec,
    decisions: list[SlotDecision],
    result: TickResult,
) -> None:
    if not decisions:
        return
    statement = (
        insert(Slot)
        .values(
            [
                {
                    "plan_id": plan_id,
                    "slot_at": d.slot_at,
                    "state": d.state.value,
                    "reason": d.reason,
                    "ended_at": None if d.queues_a_run else d.slot_at,
                }
                for d in decisions
            ]
        )
        .on_conflict_do_nothing(index_elements=[Slot.plan_id, Slot.slot_at])
        .returning(Slot.id, Slot.slot_at, Slot.state)
    )
    created = db.execute(statement).all()
    result.slots += len(created)
    triggers = {d.slot_at: d.trigger for d in decisions}
    for slot_id, slot_at, state in created:
        if state != RunState.QUEUED.value:
            continue
        run_id = uuid.uuid4()
        db.execute(
            insert(Run).values(
                id=run_id,
                plan_id=plan_id,
                slot_id=slot_id,
                kind=RunKind.BACKUP.value,
                trigger=triggers[slot_at],
                state=RunState.QUEUED.value,
            )
        )
        db.execute(text("UPDATE slots SET run_id = :r WHERE id = :s"), {"r": run_id, "s": slot_id})
        result.new_runs.append(NewRun(run_id, spec.key, slot_at))


def orphaned_runs(engine: Engine, now: datetime, grace: timedelta) -> list[uuid.UUID]:
    """Runs queued before ``now - grace`` that no job was queued for (see the module)."""
    with engine.connect() as db:
        rows = db.execute(
            text(
                "SELECT id FROM runs WHERE state = 'queued' AND job_id IS NULL "
                "AND queued_at < :before"
            ),
            {"before": now - grace},
        ).all()
    return [row[0] for row in rows]
