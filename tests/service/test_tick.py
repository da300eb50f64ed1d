"""The scheduler's tick against a real catalog: every slot once, however many tick."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from safehold.catalog import RunKind
from safehold.policy.schedule import parse_schedule
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.plans import PlanSpec, sync_plans
from safehold.service.tick import TickState, orphaned_runs, tick
from tests.servers.private_cluster import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]

T0 = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)


@pytest.fixture
def engine(private_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Engine]:
    engine = fresh_database(private_cluster, "tick_" + request.node.name[:40].lower())
    prepare(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def spec(name: str, schedule: str, **kw: object) -> PlanSpec:
    return PlanSpec(
        project="default",
        name=name,
        config_path="/nonexistent.yaml",
        schedule=parse_schedule(schedule, key=f"default/{name}"),
        **kw,  # type: ignore[arg-type]
    )


def register(engine: Engine, *specs: PlanSpec, created: datetime = T0) -> dict[str, int]:
    ids = sync_plans(engine, specs)
    with engine.begin() as db:  # the plans were "first seen" at T0
        db.execute(text("UPDATE plans SET created_at = :t"), {"t": created})
    return ids


def ledger(engine: Engine) -> list[tuple[str, datetime, str, str | None]]:
    with engine.connect() as db:
        rows = db.execute(
            text(
                "SELECT p.name, s.slot_at, s.state, s.reason FROM slots s "
                "JOIN plans p ON p.id = s.plan_id ORDER BY p.name, s.slot_at"
            )
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_each_slot_once_and_a_run_for_each_queued_one(engine: Engine) -> None:
    plans = {s.key: s for s in (spec("a", "* * * * *"), spec("b", "*/2 * * * *"))}
    ids = register(engine, *plans.values())
    state = TickState()  # what a ticking process remembers between ticks
    for second in range(0, 5 * 60, 7):  # ticks every 7 s for 5 minutes
        tick(engine, plans, ids, T0 + timedelta(seconds=second), state)
    rows = ledger(engine)
    a = [r for r in rows if r[0] == "a"]
    b = [r for r in rows if r[0] == "b"]
    assert [r[1] for r in a] == [T0 + timedelta(minutes=m) for m in range(1, 5)]
    assert [r[1] for r in b] == [T0 + timedelta(minutes=m) for m in (2, 4)]
    # The first slot queued a run; later ones found it still queued: one waits at most.
    assert [r[2] for r in a] == ["queued", "skipped", "skipped", "skipped"]
    assert a[1][3] == "overlap: a run is already queued"
    with engine.connect() as db:
        runs = db.execute(text("SELECT count(*) FROM runs WHERE state = 'queued'")).scalar()
        linked = db.execute(text("SELECT count(*) FROM slots WHERE run_id IS NOT NULL")).scalar()
    assert runs == linked == 2


def test_concurrent_ticks_never_duplicate_a_slot(engine: Engine) -> None:
    """Many processes tick at once: the advisory lock lets one through at a time, and
    the ledger's unique key would refuse a second row anyway."""
    plans = {s.key: s for s in (spec(f"p{i}", "* * * * * *") for i in range(20))}
    ids = register(engine, *plans.values())
    errors: list[BaseException] = []
    results = []

    def ticker(offset: int) -> None:
        state = TickState()  # each "process" remembers its own next slots
        try:
            for step in range(10):
                now = T0 + timedelta(seconds=step + offset)
                results.append(tick(engine, plans, ids, now, state))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ticker, args=(i % 2,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # A tick that found the lock taken skipped its turn; one more catches up.
    results.append(tick(engine, plans, ids, T0 + timedelta(seconds=10)))
    rows = ledger(engine)
    assert len(rows) == len({(r[0], r[1]) for r in rows}) == 20 * 10
    assert sum(r.slots for r in results) == len(rows)


def test_downtime_is_recorded_as_missed_with_one_catch_up(engine: Engine) -> None:
    plans = {s.key: s for s in [spec("a", "0 * * * *", start_window=600.0)]}
    ids = register(engine, *plans.values())
    result = tick(engine, plans, ids, T0 + timedelta(hours=5, minutes=30))
    assert [r.plan_key for r in result.new_runs] == ["default/a"]
    states = [r[2] for r in ledger(engine)]
    assert states == ["missed"] * 4 + ["queued"]
    with engine.connect() as db:
        trigger = db.execute(text("SELECT trigger FROM runs")).scalar()
    assert trigger == "catch_up"


def test_a_pause_in_the_catalog_skips_slots(engine: Engine) -> None:
    plans = {s.key: s for s in [spec("a", "* * * * *")]}
    ids = register(engine, *plans.values())
    with engine.begin() as db:
        db.execute(text("UPDATE plans SET paused = true"))
    tick(engine, plans, ids, T0 + timedelta(minutes=2, seconds=1))
    assert [(r[2], r[3]) for r in ledger(engine)] == [("skipped", "paused")] * 2


def test_runs_without_a_job_are_found_after_the_grace(engine: Engine) -> None:
    plans = {s.key: s for s in [spec("a", "* * * * *")]}
    ids = register(engine, *plans.values())
    result = tick(engine, plans, ids, T0 + timedelta(minutes=1))
    (new,) = result.new_runs
    with engine.connect() as db:
        queued_at = db.execute(text("SELECT queued_at FROM runs")).scalar_one()
    assert orphaned_runs(engine, queued_at + timedelta(seconds=5), timedelta(seconds=30)) == []
    later = queued_at + timedelta(seconds=31)
    assert orphaned_runs(engine, later, timedelta(seconds=30)) == [new.run_id]
    with engine.begin() as db:
        db.execute(text("UPDATE runs SET job_id = 1"))
    assert orphaned_runs(engine, later, timedelta(seconds=30)) == []


def test_a_process_whose_memory_is_stale_still_records_every_slot(engine: Engine) -> None:
    """Two processes tick in turn, each with its own memory of the next slots: the one
    that finds a plan already ticked by the other moves on; no slot is lost or doubled."""
    plans = {s.key: s for s in (spec(f"p{i}", "*/10 * * * * *") for i in range(30))}
    ids = register(engine, *plans.values())
    one, two = TickState(), TickState()
    for step in range(1, 40):
        state = one if step % 3 else two
        tick(engine, plans, ids, T0 + timedelta(seconds=step * 4), state)
    rows = ledger(engine)
    expected = [T0 + timedelta(seconds=10 * k) for k in range(1, 16)]  # up to T0 + 156 s
    for name in (f"p{i}" for i in range(30)):
        assert [r[1] for r in rows if r[0] == name] == expected


def test_a_prune_plan_s_slots_queue_prune_runs(engine: Engine) -> None:
    prune = PlanSpec(
        project="_repository",
        name="/srv/repo",
        config_path="/nonexistent.yaml",
        schedule=parse_schedule("*/2 * * * *", key="_repository//srv/repo"),
        kind=RunKind.PRUNE,
        on_overlap="skip",
    )
    plans = {s.key: s for s in (spec("a", "*/2 * * * *"), prune)}
    ids = register(engine, *plans.values())
    result = tick(engine, plans, ids, T0 + timedelta(minutes=2))
    assert sorted(r.plan_key for r in result.new_runs) == ["_repository//srv/repo", "default/a"]
    with engine.connect() as db:
        kinds = db.execute(
            text("SELECT p.name, r.kind FROM runs r JOIN plans p ON p.id = r.plan_id ORDER BY 1")
        ).all()
    assert [tuple(k) for k in kinds] == [("/srv/repo", "prune"), ("a", "backup")]
    # The prune still waiting counts as the plan's run: the next slot is skipped (on_overlap).
    tick(engine, plans, ids, T0 + timedelta(minutes=4))
    prune_rows = [r for r in ledger(engine) if r[0] == "/srv/repo"]
    assert [r[2] for r in prune_rows] == ["queued", "skipped"]
