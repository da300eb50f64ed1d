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

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, text

from safehold.catalog import RunState
from safehold.policy.slots import PlanFacts, SlotDecision, plan_tick
from safehold.service.plans import PlanSpec

__all__ = ["TICK_LOCK", "NewRun", "TickResult", "TickState", "orphaned_runs", "tick"]

# "safetick" in ASCII, its top bit cleared: the advisory lock one ticking process holds.
TICK_LOCK = 0x7361666574_69636B
# Rows one plan may add in one tick (a plan that fires every second, down for a week).
ROWS_PER_PLAN = 1_000

_FACTS = text(
    """
    SELECT p.id, p.paused, p.created_at,
      (SELECT max(s.slot_at) FROM slots s WHERE s.plan_id = p.id) AS newest_slot,
      (SELECT count(*) FROM runs r WHERE r.plan_id = p.id
         AND r.kind IN ('backup', 'prune', 'verify', 'drill') AND r.state = 'running') AS running,
      (SELECT count(*) FROM runs r WHERE r.plan_id = p.id
         AND r.kind IN ('backup', 'prune', 'verify', 'drill') AND r.state = 'queued') AS waiting,
      (SELECT max(r.started_at) FROM runs r WHERE r.plan_id = p.id
         AND r.kind IN ('backup', 'prune', 'verify', 'drill')
         AND r.state IN ('running', 'succeeded')) AS last_start
    FROM plans p WHERE p.id = ANY(:ids)
    """
)
_SINCE = text(
    """
    SELECT p.id, coalesce(max(s.slot_at), p.created_at) FROM plans p
    LEFT JOIN slots s ON s.plan_id = p.id WHERE p.id = ANY(:ids) GROUP BY p.id
    """
)
_LINK_RUNS = text(
    "UPDATE slots s SET run_id = r.id FROM runs r WHERE r.slot_id = s.id AND r.id = ANY(:runs)"
)
log = logging.getLogger("safehold.service")

# A tick's rows go in as arrays, one parameter a column whatever the number of rows
# (a multi-row VALUES cost 5 s of statement building for 10,000 rows).
_INSERT_SLOTS = text(
    """
    INSERT INTO slots (plan_id, slot_at, state, reason, ended_at)
    SELECT * FROM unnest(CAST(:plan AS bigint[]), CAST(:at AS timestamptz[]),
                         CAST(:state AS text[]), CAST(:reason AS text[]),
                         CAST(:ended AS timestamptz[]))
    ON CONFLICT (plan_id, slot_at) DO NOTHING
    RETURNING id, plan_id, slot_at, state
    """
)
_INSERT_RUNS = text(
    """
    INSERT INTO runs (id, plan_id, slot_id, kind, trigger, state)
    SELECT r.id, r.plan_id, r.slot_id, r.kind, r.trigger, 'queued'
    FROM unnest(CAST(:id AS uuid[]), CAST(:plan AS bigint[]), CAST(:slot AS bigint[]),
                CAST(:kind AS text[]), CAST(:trigger AS text[]))
         AS r(id, plan_id, slot_id, kind, trigger)
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


@dataclass
class TickState:
    """What a ticking process remembers between ticks: each plan's next slot.

    With it a tick reads the ledger only for the plans that are due, and searches their
    schedules only for the slot after the one due: the tick of 10,000 plans, of which a
    few are due, costs a few queries, not 10,000 schedule searches. A stale entry is
    harmless: a plan another process has ticked meanwhile is read, found not due, and
    its entry moved on. Entries move only after the tick's transaction committed.
    """

    next_due: dict[int, datetime] = field(default_factory=dict)


def tick(
    engine: Engine,
    specs: Mapping[str, PlanSpec],
    ids: Mapping[str, int],
    now: datetime,
    state: TickState | None = None,
) -> TickResult:
    """One tick over the plans ``specs`` (keyed ``project/name``; ``ids`` their rows)."""
    state = state if state is not None else TickState()
    moved: dict[int, datetime] = {}
    with engine.begin() as db:
        got = db.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": TICK_LOCK})
        if not got.scalar():
            return TickResult(ticked=False)
        by_id = {ids[key]: spec for key, spec in specs.items() if key in ids}
        unknown = [plan_id for plan_id in by_id if plan_id not in state.next_due]
        if unknown:
            for plan_id, since in db.execute(_SINCE, {"ids": unknown}):
                state.next_due[plan_id] = by_id[plan_id].schedule.next_after(since)
        due = [plan_id for plan_id in by_id if state.next_due[plan_id] <= now]
        result = TickResult(ticked=True)
        if not due:
            return result
        rows: list[tuple[int, SlotDecision]] = []
        for plan_id, paused, created_at, newest, running, waiting, last_start in db.execute(
            _FACTS, {"ids": due}
        ):
            spec = by_id[plan_id]
            since = newest or created_at
            known = state.next_due[plan_id]
            facts = PlanFacts(since=since, running=running, waiting=waiting, last_start=last_start)
            decisions, moved[plan_id] = plan_tick(
                spec.rules(paused=paused),
                facts,
                now,
                limit=ROWS_PER_PLAN,
                first_due=known if known > since else None,
            )
            if len(decisions) == ROWS_PER_PLAN:
                log.warning(
                    "plan %s: more than %d slots came due at once (a long downtime); the "
                    "older ones are not in the ledger", spec.key, ROWS_PER_PLAN,
                )  # fmt: skip
            rows.extend((plan_id, d) for d in decisions)
        _record(db, by_id, rows, result)
    state.next_due.update(moved)
    return result


def _record(
    db: Connection,
    by_id: Mapping[int, PlanSpec],
    rows: list[tuple[int, SlotDecision]],
    result: TickResult,
) -> None:
    """Insert the decided rows (those another process inserted first are left out) and a
    run for each new ``queued`` one, in a few statements whatever the number of plans."""
    triggers = {(plan_id, d.slot_at): d.trigger for plan_id, d in rows}
    created = db.execute(
        _INSERT_SLOTS,
        {
            "plan": [plan_id for plan_id, _ in rows],
            "at": [d.slot_at for _, d in rows],
            "state": [d.state.value for _, d in rows],
            "reason": [d.reason for _, d in rows],
            "ended": [None if d.queues_a_run else d.slot_at for _, d in rows],
        },
    ).all()
    result.slots += len(created)
    runs = [
        {
            "id": uuid.uuid4(),
            "plan_id": plan_id,
            "slot_id": slot_id,
            "kind": by_id[plan_id].kind.value,
            "trigger": triggers[(plan_id, slot_at)],
            "state": RunState.QUEUED.value,
        }
        for slot_id, plan_id, slot_at, state in created
        if state == RunState.QUEUED.value
    ]
    if runs:
        db.execute(
            _INSERT_RUNS,
            {
                "id": [run["id"] for run in runs],
                "plan": [run["plan_id"] for run in runs],
                "slot": [run["slot_id"] for run in runs],
                "kind": [run["kind"] for run in runs],
                "trigger": [run["trigger"] for run in runs],
            },
        )
    if runs:
        db.execute(_LINK_RUNS, {"runs": [run["id"] for run in runs]})
    slot_times = {slot_id: slot_at for slot_id, _, slot_at, _ in created}
    result.new_runs.extend(
        NewRun(run["id"], by_id[run["plan_id"]].key, slot_times[run["slot_id"]]) for run in runs
    )


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
