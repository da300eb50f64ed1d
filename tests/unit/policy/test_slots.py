from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from safehold.policy.schedule import parse_schedule
from safehold.policy.slots import (
    PlanFacts,
    PlanRules,
    SlotState,
    decide_slots,
    plan_tick,
    slots_left_out,
    start_window_end,
)

T0 = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HALF = timedelta(minutes=30)


def every_minute(**kw: object) -> PlanRules:
    return PlanRules(key="default/db", schedule=parse_schedule("* * * * *", key="x"), **kw)  # type: ignore[arg-type]


def test_a_slot_seen_on_time_is_queued_once() -> None:
    rules = every_minute()
    first = decide_slots(rules, PlanFacts(since=T0), T0 + MINUTE + timedelta(seconds=2))
    assert [(d.slot_at, d.state) for d in first] == [(T0 + MINUTE, SlotState.QUEUED)]
    assert first[0].queues_a_run and first[0].trigger == "schedule"
    # The next tick starts from the newest row: nothing new until the next minute.
    assert decide_slots(rules, PlanFacts(since=T0 + MINUTE), T0 + MINUTE * 1.5) == []


def test_downtime_gives_missed_rows_and_one_catch_up_run() -> None:
    rules = PlanRules(key="p", schedule=parse_schedule("0 */2 * * *", key="p"), start_window=HALF)
    # Down from 20:00 to 06:45 the next day: slots 22:00..06:00 all past their window.
    now = T0 + timedelta(hours=10, minutes=45)
    decisions = decide_slots(rules, PlanFacts(since=T0), now)
    states = [d.state for d in decisions]
    assert len(decisions) == 5
    assert states[:-1] == [SlotState.MISSED] * 4
    assert decisions[-1].state is SlotState.QUEUED and decisions[-1].trigger == "catch_up"
    assert sum(d.queues_a_run for d in decisions) == 1  # never once per missed slot


def test_catch_up_none_only_records() -> None:
    rules = PlanRules(
        key="p", schedule=parse_schedule("0 */2 * * *", key="p"), start_window=HALF, catch_up="none"
    )
    decisions = decide_slots(rules, PlanFacts(since=T0), T0 + timedelta(hours=10, minutes=45))
    assert len(decisions) == 5
    assert {d.state for d in decisions} == {SlotState.MISSED}


def test_a_slot_still_in_its_window_runs_instead_of_a_catch_up() -> None:
    rules = every_minute()
    now = T0 + 10 * MINUTE + timedelta(seconds=5)
    decisions = decide_slots(rules, PlanFacts(since=T0), now)
    assert [d.state for d in decisions] == [SlotState.MISSED] * 9 + [SlotState.QUEUED]
    assert decisions[-1].trigger == "schedule"


def test_start_window_is_the_next_slot_or_the_window() -> None:
    hourly = PlanRules(key="p", schedule=parse_schedule("@hourly", key="p"))
    assert start_window_end(hourly, T0) == T0 + timedelta(hours=1)
    daily = PlanRules(key="p", schedule=parse_schedule("@daily", key="p"))
    midnight = datetime(2026, 12, 7, tzinfo=UTC)
    assert start_window_end(daily, midnight) == midnight + timedelta(hours=1)
    # A daily slot seen at 09:00 after a night down is missed, and caught up once.
    decisions = decide_slots(daily, PlanFacts(since=T0), midnight + timedelta(hours=9))
    assert [(d.state, d.trigger) for d in decisions] == [(SlotState.QUEUED, "catch_up")]
    roomy = replace(daily, start_window=timedelta(hours=12), catch_up="none")
    decisions = decide_slots(roomy, PlanFacts(since=T0), midnight + timedelta(hours=9))
    assert [(d.state, d.trigger) for d in decisions] == [(SlotState.QUEUED, "schedule")]


def test_paused_plans_skip_and_never_miss() -> None:
    rules = every_minute(paused=True)
    decisions = decide_slots(rules, PlanFacts(since=T0), T0 + 5 * MINUTE + timedelta(seconds=1))
    assert {(d.state, d.reason) for d in decisions} == {(SlotState.SKIPPED, "paused")}
    assert len(decisions) == 5


def test_overlap_skip_and_queue() -> None:
    now = T0 + MINUTE
    skip = decide_slots(every_minute(on_overlap="skip"), PlanFacts(since=T0, running=1), now)
    assert skip[0].state is SlotState.SKIPPED and "still going" in (skip[0].reason or "")
    queue = decide_slots(every_minute(on_overlap="queue"), PlanFacts(since=T0, running=1), now)
    assert queue[0].state is SlotState.QUEUED
    full = decide_slots(every_minute(), PlanFacts(since=T0, running=1, waiting=1), now)
    assert full[0].state is SlotState.SKIPPED and "already queued" in (full[0].reason or "")


def test_min_interval_counts_from_the_last_successful_start() -> None:
    rules = every_minute(min_interval=timedelta(minutes=10))
    facts = PlanFacts(since=T0, last_start=T0 - 5 * MINUTE)
    early = decide_slots(rules, facts, T0 + MINUTE)
    assert early[0].state is SlotState.SKIPPED
    assert (early[0].reason or "").startswith("min_interval: the last run started 6 min")
    later = decide_slots(rules, replace(facts, since=T0 + 4 * MINUTE), T0 + 5 * MINUTE)
    assert later[0].state is SlotState.QUEUED


def test_the_number_of_rows_a_tick_asks_for_is_bounded() -> None:
    rules = PlanRules(key="p", schedule=parse_schedule("* * * * * *", key="p"))
    facts = PlanFacts(since=T0 - timedelta(days=7))
    decisions = decide_slots(rules, facts, T0, limit=500)
    assert len(decisions) == 500 and decisions[-1].slot_at == T0
    assert slots_left_out(rules, facts, T0, 500)
    assert not slots_left_out(rules, PlanFacts(since=T0 - timedelta(seconds=10)), T0, 500)


@settings(deadline=None, max_examples=60)
@given(
    ticks=st.lists(st.integers(1, 600), min_size=1, max_size=40),
    running=st.booleans(),
)
def test_ticks_at_any_pace_decide_every_slot_exactly_once(ticks: list[int], running: bool) -> None:
    """However irregular the ticks, every slot gets exactly one row, in order, and at
    most one run is queued per tick."""
    rules = PlanRules(key="p", schedule=parse_schedule("*/2 * * * *", key="p"))
    since, now, seen = T0, T0, []
    for step in ticks:
        now += timedelta(seconds=step * 7)
        decisions = decide_slots(rules, PlanFacts(since=since, running=int(running)), now)
        assert sum(d.queues_a_run for d in decisions) <= 1
        seen += [d.slot_at for d in decisions]
        if decisions:
            since = decisions[-1].slot_at
    assert seen == list(rules.schedule.slots(T0, now))


@settings(deadline=None, max_examples=80)
@given(
    schedule=st.sampled_from(
        ["* * * * *", "*/7 * * * * *", "@hourly", "0 */2 * * *", "@every 50s"]
    ),
    since_s=st.integers(0, 7200),
    span_s=st.integers(0, 20000),
    limit=st.integers(1, 50),
    window_s=st.integers(1, 4000),
)
def test_the_known_first_slot_gives_the_same_decisions(
    schedule: str, since_s: int, span_s: int, limit: int, window_s: int
) -> None:
    """plan_tick with the first due slot known (the tick's cache) decides exactly as the
    search from scratch does, and names the next slot after what it decided."""
    rules = PlanRules(
        key="p",
        schedule=parse_schedule(schedule, key="p"),
        start_window=timedelta(seconds=window_s),
    )
    since = T0 + timedelta(seconds=since_s)
    now = since + timedelta(seconds=span_s)
    facts = PlanFacts(since=since)
    known = rules.schedule.next_after(since)
    fast, following = plan_tick(rules, facts, now, limit=limit, first_due=known)
    assert fast == decide_slots(rules, facts, now, limit=limit)
    newest = fast[-1].slot_at if fast else since
    assert following == rules.schedule.next_after(newest)
