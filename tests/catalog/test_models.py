"""The catalog's models on a real PostgreSQL: the ledger's uniqueness and the states'
checks are the database's, so that no process can break them, however many tick."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from safehold.catalog import (
    Plan,
    PlanOrigin,
    Run,
    RunKind,
    RunLine,
    RunState,
    RunTrigger,
    Slot,
    SlotState,
    Worker,
    migrate,
)
from safehold.service.cluster import Cluster
from tests.servers.private_cluster import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("catalog_cluster")]

T0 = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def engine(private_cluster: Cluster) -> Iterator[Engine]:
    engine = fresh_database(private_cluster, "models")
    with engine.begin() as conn:
        migrate.upgrade(conn)
    try:
        yield engine
    finally:
        engine.dispose()


def new_plan(session: Session, name: str) -> Plan:
    plan = Plan(name=name, origin=PlanOrigin.FILE, source=name, schedule="*/5 * * * *")
    session.add(plan)
    session.flush()
    return plan


def test_a_slot_exists_once_per_plan_and_time(engine: Engine) -> None:
    with Session(engine) as session:
        plan = new_plan(session, "unique-slot")
        session.add(Slot(plan_id=plan.id, slot_at=T0))
        session.commit()
        session.add(Slot(plan_id=plan.id, slot_at=T0))
        with pytest.raises(IntegrityError, match="uq_slots_plan_id_slot_at"):
            session.commit()
        session.rollback()
        # How a tick creates slots: whoever comes second inserts nothing.
        statement = (
            insert(Slot)
            .values([{"plan_id": plan.id, "slot_at": T0 + timedelta(minutes=m)} for m in (0, 5)])
            .on_conflict_do_nothing(index_elements=["plan_id", "slot_at"])
            .returning(Slot.slot_at)
        )
        assert session.scalars(statement).all() == [T0 + timedelta(minutes=5)]
        session.commit()
        count = select(func.count()).select_from(Slot).where(Slot.plan_id == plan.id)
        assert session.scalar(count) == 2


def test_the_same_time_in_two_plans_is_two_slots(engine: Engine) -> None:
    with Session(engine) as session:
        a, b = new_plan(session, "two-a"), new_plan(session, "two-b")
        session.add_all([Slot(plan_id=a.id, slot_at=T0), Slot(plan_id=b.id, slot_at=T0)])
        session.commit()


@pytest.mark.parametrize("table", ["slots", "runs"])
def test_an_unknown_state_is_refused(engine: Engine, table: str) -> None:
    with Session(engine) as session:
        plan = new_plan(session, f"bad-state-{table}")
        row: Slot | Run
        if table == "slots":
            row = Slot(plan_id=plan.id, slot_at=T0, state="done")
        else:
            row = Run(
                id=uuid.uuid4(),
                plan_id=plan.id,
                kind=RunKind.BACKUP,
                trigger=RunTrigger.MANUAL,
                state="done",
            )
        session.add(row)
        with pytest.raises(IntegrityError, match=f"ck_{table}_state"):
            session.commit()


def test_a_plan_name_is_unique_in_its_project(engine: Engine) -> None:
    with Session(engine) as session:
        new_plan(session, "named")
        session.add(Plan(project="other", name="named", origin="api", schedule="@daily"))
        session.commit()
        with pytest.raises(IntegrityError, match="uq_plans_project_name"):
            new_plan(session, "named")


def test_a_run_with_its_slot_phases_and_lines(engine: Engine) -> None:
    run_id = uuid.uuid4()
    phases = [
        {
            "phase": "before_backup",
            "state": "succeeded",
            "started_at": T0.isoformat(),
            "ended_at": (T0 + timedelta(seconds=1)).isoformat(),
            "output": "locked\n",
        }
    ]
    with Session(engine) as session:
        plan = new_plan(session, "with-run")
        plan.settings = {"timeout": "1h", "retention": {"keep_daily": 7}}
        slot = Slot(plan_id=plan.id, slot_at=T0, state=SlotState.RUNNING)
        session.add(slot)
        session.flush()
        session.add(
            Run(
                id=run_id,
                plan_id=plan.id,
                slot_id=slot.id,
                kind=RunKind.BACKUP,
                trigger=RunTrigger.SCHEDULE,
                state=RunState.SUCCEEDED,
                worker="host-1:0",
                job_id=42,
                phases=phases,
                snapshot_id="ab" * 32,
                bytes_read=1 << 40,
                bytes_added=12,
            )
        )
        session.flush()
        slot.run_id = run_id
        slot.state = SlotState.SUCCEEDED
        session.add_all(
            RunLine(run_id=run_id, seq=i, at=T0, level="info", message=f"line {i}")
            for i in range(3)
        )
        session.add(Worker(name="host-1:0", host="host-1", pid=1234))
        session.commit()
    with Session(engine) as session:
        run = session.get_one(Run, run_id)
        assert run.phases == phases
        assert run.bytes_read == 1 << 40
        assert run.attempt == 1
        assert run.queued_at.tzinfo is not None
        loaded = session.get_one(Plan, run.plan_id)
        assert loaded.settings["retention"] == {"keep_daily": 7}
        assert loaded.project == "default" and loaded.timezone == "UTC" and not loaded.paused
        assert session.scalars(select(Slot.run_id).where(Slot.plan_id == loaded.id)).one() == run_id
        lines = select(RunLine.message).where(RunLine.run_id == run_id).order_by(RunLine.seq)
        assert session.scalars(lines).all() == ["line 0", "line 1", "line 2"]
        # A plan's ledger, runs and lines go with it.
        session.delete(loaded)
        session.commit()
        assert session.get(Run, run_id) is None
        assert session.scalar(select(func.count()).select_from(RunLine)) == 0
