from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehold.errors import UsageError
from safehold.policy.schedule import parse_every, parse_schedule

PROPERTY = settings(deadline=None)
T0 = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)


def at(hour: int, minute: int = 0, second: int = 0, day: int = 6) -> datetime:
    return datetime(2026, 12, day, hour, minute, second, tzinfo=UTC)


def test_five_fields_are_minute_first() -> None:
    schedule = parse_schedule("*/20 * * * *", key="p")
    assert list(schedule.slots(T0, at(21))) == [at(20, 20), at(20, 40), at(21)]


def test_six_fields_put_seconds_first_as_service_backup_does() -> None:
    schedule = parse_schedule("30 */30 * * * *", key="p")
    assert list(schedule.slots(T0, at(21))) == [at(20, 0, 30), at(20, 30, 30)]


def test_names() -> None:
    assert parse_schedule("@daily", key="p").next_after(T0) == at(0, day=7)
    assert parse_schedule("@hourly", key="p").next_after(T0) == at(21)
    assert parse_schedule("@weekly", key="p").next_after(T0) == datetime(2026, 12, 13, tzinfo=UTC)


def test_a_time_zone_moves_the_wall_clock_and_keeps_dst() -> None:
    berlin = parse_schedule("0 2 * * *", key="p", timezone="Europe/Berlin")
    start = datetime(2027, 3, 26, 12, tzinfo=UTC)
    slots = list(berlin.slots(start, start + timedelta(days=3)))
    # 02:00 CET is 01:00 UTC; on 28 March 02:00 does not exist and the slot is 03:00 CEST.
    assert slots[0] == datetime(2027, 3, 27, 1, tzinfo=UTC)
    assert slots[1] == datetime(2027, 3, 28, 1, tzinfo=UTC)
    assert slots[2] == datetime(2027, 3, 29, 0, tzinfo=UTC)


@pytest.mark.parametrize("expression", ["H 3 * * *", "@daily-random", "H/15 * * * *"])
def test_spread_is_stable_for_a_plan_and_differs_between_plans(expression: str) -> None:
    one = parse_schedule(expression, key="default/db")
    again = parse_schedule(expression, key="default/db")
    assert one.next_after(T0) == again.next_after(T0)
    firsts = {parse_schedule(expression, key=f"p{i}").next_after(T0) for i in range(50)}
    assert len(firsts) > 5  # fifty plans do not all start in the same second


def test_random_names_spread_over_seconds() -> None:
    seconds = {
        parse_schedule("@hourly-random", key=f"p{i}").next_after(T0).second for i in range(60)
    }
    assert len(seconds) > 10


def test_h_in_a_field_stays_within_its_hour() -> None:
    for i in range(30):
        slot = parse_schedule("H 3 * * *", key=f"plan-{i}").next_after(T0)
        assert slot.hour == 3 and slot.second == 0


def test_every_is_aligned_to_the_epoch_plus_a_plan_offset() -> None:
    schedule = parse_schedule("@every 90m", key="p")
    slots = list(schedule.slots(T0, T0 + timedelta(hours=6)))
    assert len(slots) == 4
    assert all(b - a == timedelta(minutes=90) for a, b in itertools.pairwise(slots))
    # Another process, started at another time, computes the same slot times.
    later = parse_schedule("@every 90m", key="p")
    assert later.next_after(slots[1] - timedelta(seconds=1)) == slots[1]
    assert schedule.describe() == "every 1h30m"


def test_previous_at_or_before_includes_the_moment() -> None:
    schedule = parse_schedule("0 * * * *", key="p")
    assert schedule.previous_at_or_before(at(20)) == at(20)
    assert schedule.previous_at_or_before(at(20, 59)) == at(20)
    every = parse_schedule("@every 10m", key="p")
    slot = every.next_after(T0)
    assert every.previous_at_or_before(slot) == slot


def test_recent_slots_walks_back_a_bounded_number() -> None:
    schedule = parse_schedule("* * * * * *", key="p")  # every second
    week_ago = T0 - timedelta(days=7)
    slots, truncated = schedule.recent_slots(week_ago, T0, 100)
    assert truncated
    assert slots == [T0 - timedelta(seconds=99 - i) for i in range(100)]
    few, truncated = schedule.recent_slots(T0 - timedelta(seconds=3), T0, 100)
    assert not truncated and len(few) == 3


@PROPERTY
@given(
    minutes=st.integers(1, 59),
    start=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
)
def test_slots_and_recent_slots_agree(minutes: int, start: datetime) -> None:
    schedule = parse_schedule(f"@every {minutes}m", key="k")
    until = start + timedelta(hours=5)
    forward = list(schedule.slots(start, until))
    backward, truncated = schedule.recent_slots(start, until, 10_000)
    assert forward == backward and not truncated
    assert all(start < slot <= until for slot in forward)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("* * * * * 99", "out of range"),  # service-backup's own example of a bad schedule
        ("1 2 3", "has 3 fields"),
        ("@fortnightly", "unknown schedule name"),
        ("@every 0s", "longer than zero"),
        ("@every 5x", "not a duration"),
    ],
)
def test_bad_schedules_say_what_is_wrong(expression: str, says: str) -> None:
    with pytest.raises(UsageError, match=says) as caught:
        parse_schedule(expression, key="p")
    assert caught.value.hint


def test_unknown_time_zone() -> None:
    with pytest.raises(UsageError, match="unknown time zone"):
        parse_schedule("@daily", key="p", timezone="Mars/Olympus")


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        parse_schedule("@daily", key="p").next_after(datetime(2026, 1, 1))


def test_parse_every() -> None:
    assert parse_every("1h30m") == 5400
    assert parse_every("2d") == 172800
    assert parse_every("45s") == 45
    with pytest.raises(UsageError):
        parse_every("")
