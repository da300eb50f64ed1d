from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from safehold.errors import UsageError
from safehold.policy import (
    Duration,
    RetentionPolicy,
    RetentionResult,
    apply_retention,
    from_osb,
    group_items,
    parse_duration,
)

# No deadline: these check decisions, not speed, and a busy CI runner must not fail them.
PROPERTY = settings(deadline=None)


@dataclass(frozen=True)
class Snap:
    id: str
    time: datetime
    tags: tuple[str, ...] = ()
    host: str = "db1"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def policy_with(**rules: Any) -> RetentionPolicy:
    """A policy from rule names chosen at run time (parametrized tests)."""
    return RetentionPolicy(**rules)


# The synthetic series: one snapshot every 6 hours (00, 06, 12, 18 UTC) from 1 January 2021
# to 31 December 2023, 1095 days in all. Ids are the UTC hour, so expected ids can be
# written down by hand and sort like the times.
START = utc(2021, 1, 1)
LAST = utc(2023, 12, 31, 18)
NOW = utc(2024, 1, 1)


def snap_id(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H")


def make_series() -> list[Snap]:
    series = []
    t = START
    while t <= LAST:
        series.append(Snap(snap_id(t), t))
        t += timedelta(hours=6)
    return series


SERIES = make_series()
ALL_IDS = {s.id for s in SERIES}


def apply(
    policy: RetentionPolicy, items: Sequence[Snap] = SERIES, now: datetime = NOW
) -> RetentionResult[Snap]:
    return apply_retention(items, policy, now)


def kept(policy: RetentionPolicy, items: Sequence[Snap] = SERIES, now: datetime = NOW) -> list[str]:
    return [s.id for s in apply(policy, items, now).keep]


def t18(*days: str) -> list[str]:
    return [f"{d}T18" for d in days]


# --- an independent oracle ------------------------------------------------------------------
# Group-then-pick, rather than the streaming walk the implementation does: put every
# snapshot in its UTC bucket, take the newest of each bucket, and keep the newest N buckets.


def hour_key(t: datetime) -> Hashable:
    return t.strftime("%Y-%m-%d %H")


def day_key(t: datetime) -> Hashable:
    return t.date()


def week_key(t: datetime) -> Hashable:
    return t.strftime("%G-W%V")


def month_key(t: datetime) -> Hashable:
    return t.strftime("%Y-%m")


def year_key(t: datetime) -> Hashable:
    return t.strftime("%Y")


def newest_per_bucket(
    items: Sequence[Snap], key: Callable[[datetime], Hashable], count: int
) -> set[str]:
    buckets: dict[Hashable, list[Snap]] = {}
    for s in items:
        buckets.setdefault(key(s.time.astimezone(UTC)), []).append(s)
    newest = sorted(
        (max(b, key=instant_then_id) for b in buckets.values()), key=instant_then_id, reverse=True
    )
    chosen = newest if count == -1 else newest[:count]
    return {s.id for s in chosen}


def instant_then_id(s: Snap) -> tuple[datetime, str]:
    # Through UTC: datetimes sharing a tzinfo compare by wall clock, ignoring fold.
    return (s.time.astimezone(UTC), s.id)


def n_newest(items: Sequence[Snap], count: int) -> list[str]:
    ordered = sorted(items, key=instant_then_id, reverse=True)
    return [s.id for s in (ordered if count == -1 else ordered[:count])]


BUCKET_RULES = {
    "keep_hourly": (hour_key, "hourly snapshot"),
    "keep_daily": (day_key, "daily snapshot"),
    "keep_weekly": (week_key, "weekly snapshot"),
    "keep_monthly": (month_key, "monthly snapshot"),
    "keep_yearly": (year_key, "yearly snapshot"),
}


# --- each rule alone, on the series -----------------------------------------------------------


def test_series_shape() -> None:
    assert len(SERIES) == 1095 * 4
    assert SERIES[0].id == "2021-01-01T00"
    assert SERIES[-1].id == "2023-12-31T18"


def test_keep_last() -> None:
    result = apply(RetentionPolicy(keep_last=5))
    assert [s.id for s in result.keep] == [
        "2023-12-31T18",
        "2023-12-31T12",
        "2023-12-31T06",
        "2023-12-31T00",
        "2023-12-30T18",
    ]
    assert all(result.reasons[i] == ["last snapshot"] for i in result.reasons)


def test_keep_hourly_on_a_six_hourly_series_is_keep_last() -> None:
    assert kept(RetentionPolicy(keep_hourly=3)) == [
        "2023-12-31T18",
        "2023-12-31T12",
        "2023-12-31T06",
    ]


def test_keep_hourly_takes_the_newest_in_each_hour() -> None:
    items = [
        Snap("a", utc(2024, 5, 1, 10, 5)),
        Snap("b", utc(2024, 5, 1, 10, 40)),
        Snap("c", utc(2024, 5, 1, 11, 10)),
        Snap("d", utc(2024, 5, 1, 11, 59, 59)),
        Snap("e", utc(2024, 5, 1, 9, 0)),
    ]
    assert kept(RetentionPolicy(keep_hourly=2), items) == ["d", "b"]


def test_keep_daily() -> None:
    result = apply(RetentionPolicy(keep_daily=3))
    assert [s.id for s in result.keep] == t18("2023-12-31", "2023-12-30", "2023-12-29")
    assert result.reasons["2023-12-30T18"] == ["daily snapshot"]


def test_keep_weekly_uses_iso_weeks() -> None:
    # 31 December 2023 is a Sunday, the last day of ISO week 2023-W52.
    assert kept(RetentionPolicy(keep_weekly=3)) == t18("2023-12-31", "2023-12-24", "2023-12-17")


def test_keep_monthly() -> None:
    assert kept(RetentionPolicy(keep_monthly=4)) == t18(
        "2023-12-31", "2023-11-30", "2023-10-31", "2023-09-30"
    )


def test_keep_yearly_asks_for_more_years_than_exist() -> None:
    assert kept(RetentionPolicy(keep_yearly=5)) == t18("2023-12-31", "2022-12-31", "2021-12-31")


@pytest.mark.parametrize("rule", sorted(BUCKET_RULES))
@pytest.mark.parametrize("count", [1, 2, 10, 60, 400, -1])
def test_each_bucket_rule_matches_the_oracle(rule: str, count: int) -> None:
    key, reason = BUCKET_RULES[rule]
    result = apply(policy_with(**{rule: count}))
    assert {s.id for s in result.keep} == newest_per_bucket(SERIES, key, count)
    assert set(result.reasons) == {s.id for s in result.keep}
    assert all(r == [reason] for r in result.reasons.values())


def test_unlimited_counts() -> None:
    assert len(kept(RetentionPolicy(keep_last=-1))) == len(SERIES)
    daily = kept(RetentionPolicy(keep_daily=-1))
    assert len(daily) == 1095
    assert all(i.endswith("T18") for i in daily)
    weekly = kept(RetentionPolicy(keep_weekly=-1))
    # 2020-W53 (1-3 Jan 2021) plus 52 ISO weeks in each of 2021, 2022 and 2023; each one's
    # newest snapshot is its Sunday evening, 3 January 2021 being the first Sunday.
    sundays = [date(2021, 1, 3) + timedelta(weeks=n) for n in range(157)]
    assert weekly == t18(*(d.isoformat() for d in reversed(sundays)))
    assert len(kept(RetentionPolicy(keep_monthly=-1))) == 36
    assert kept(RetentionPolicy(keep_yearly=-1)) == t18("2023-12-31", "2022-12-31", "2021-12-31")


def test_zero_count_is_an_unset_rule() -> None:
    assert kept(RetentionPolicy(keep_last=0, keep_daily=1)) == ["2023-12-31T18"]


# --- keep_within: measured from now -----------------------------------------------------------


def test_keep_within_is_relative_to_now() -> None:
    result = apply(RetentionPolicy(keep_within=parse_duration("30d")))
    # cut-off 2 December 00:00, exclusive: 06:00, 12:00, 18:00 that day, then 29 full days
    ids = [s.id for s in result.keep]
    assert len(ids) == 3 + 29 * 4
    assert ids[0] == "2023-12-31T18"
    assert ids[-1] == "2023-12-02T06"
    assert result.reasons["2023-12-02T06"] == ["within 30d"]


def test_keep_within_is_not_relative_to_the_newest_snapshot() -> None:
    # restic measures from the newest snapshot and would keep December; safehold measures
    # from now, so after five months without a backup nothing is within 30 days.
    result = apply(RetentionPolicy(keep_within=Duration(days=30)), now=utc(2024, 6, 1))
    assert result.keep == []
    assert len(result.remove) == len(SERIES)


def test_keep_within_cutoff_is_exclusive() -> None:
    now = utc(2023, 12, 31, 18)  # cut-off exactly at 2023-12-30T18
    assert kept(RetentionPolicy(keep_within=Duration(days=1)), now=now) == [
        "2023-12-31T18",
        "2023-12-31T12",
        "2023-12-31T06",
        "2023-12-31T00",
    ]


def test_keep_within_keeps_snapshots_newer_than_now() -> None:
    # A clock that runs behind must not make forget delete the newest snapshots.
    ids = kept(RetentionPolicy(keep_within=Duration(hours=12)), now=utc(2023, 12, 31))
    assert ids == [
        "2023-12-31T18",
        "2023-12-31T12",
        "2023-12-31T06",
        "2023-12-31T00",
        "2023-12-30T18",
    ]


def test_keep_within_months_are_calendar_months() -> None:
    ids = kept(RetentionPolicy(keep_within=parse_duration("1m")), now=utc(2023, 3, 31, 12))
    # 31 March minus one month is 28 February 12:00; the first snapshot after it is 18:00.
    assert ids[-1] == "2023-02-28T18"
    assert "2023-02-28T12" not in ids


@pytest.mark.parametrize(
    ("field", "span", "expected"),
    [
        # cut-off 2023-12-31T00 exclusive
        ("keep_within_hourly", "1d", ["2023-12-31T18", "2023-12-31T12", "2023-12-31T06"]),
        (
            "keep_within_daily",
            "7d",
            t18(*(f"2023-12-{d}" for d in range(31, 24, -1))),
        ),
        # from 1 December 06:00: that week's Sunday is 3 December
        (
            "keep_within_weekly",
            "1m",
            t18("2023-12-31", "2023-12-24", "2023-12-17", "2023-12-10", "2023-12-03"),
        ),
        (
            "keep_within_monthly",
            "1y",
            t18(
                "2023-12-31",
                "2023-11-30",
                "2023-10-31",
                "2023-09-30",
                "2023-08-31",
                "2023-07-31",
                "2023-06-30",
                "2023-05-31",
                "2023-04-30",
                "2023-03-31",
                "2023-02-28",
                "2023-01-31",
            ),
        ),
        ("keep_within_yearly", "2y", t18("2023-12-31", "2022-12-31")),
        ("keep_within_yearly", "100y", t18("2023-12-31", "2022-12-31", "2021-12-31")),
    ],
)
def test_keep_within_buckets(field: str, span: str, expected: list[str]) -> None:
    result = apply(policy_with(**{field: parse_duration(span)}))
    assert [s.id for s in result.keep] == expected
    bucket = field.removeprefix("keep_within_")
    assert all(r == [f"{bucket} within {span}"] for r in result.reasons.values())


def test_keep_within_daily_is_relative_to_now() -> None:
    policy = RetentionPolicy(keep_within_daily=Duration(days=7))
    assert kept(policy, now=utc(2024, 1, 7, 17)) == ["2023-12-31T18"]
    assert kept(policy, now=utc(2024, 1, 7, 18)) == []


# --- combinations -----------------------------------------------------------------------------


def test_combined_rules_keep_the_union_with_all_reasons() -> None:
    policy = RetentionPolicy(
        keep_last=2, keep_daily=7, keep_weekly=4, keep_monthly=6, keep_yearly=-1
    )
    result = apply(policy)
    expected = (
        set(n_newest(SERIES, 2))
        | newest_per_bucket(SERIES, day_key, 7)
        | newest_per_bucket(SERIES, week_key, 4)
        | newest_per_bucket(SERIES, month_key, 6)
        | newest_per_bucket(SERIES, year_key, -1)
    )
    assert {s.id for s in result.keep} == expected
    assert [s.id for s in result.keep] == [
        "2023-12-31T18",
        "2023-12-31T12",
        *t18(*(f"2023-12-{d}" for d in range(30, 24, -1))),
        *t18("2023-12-24", "2023-12-17", "2023-12-10"),
        *t18("2023-11-30", "2023-10-31", "2023-09-30", "2023-08-31", "2023-07-31"),
        *t18("2022-12-31", "2021-12-31"),
    ]
    assert result.reasons["2023-12-31T18"] == [
        "last snapshot",
        "daily snapshot",
        "weekly snapshot",
        "monthly snapshot",
        "yearly snapshot",
    ]
    assert result.reasons["2023-12-31T12"] == ["last snapshot"]
    assert result.reasons["2023-12-25T18"] == ["daily snapshot"]
    assert result.reasons["2023-12-24T18"] == ["weekly snapshot"]
    assert result.reasons["2023-11-30T18"] == ["monthly snapshot"]
    assert result.reasons["2022-12-31T18"] == ["yearly snapshot"]


def test_within_and_bucket_rules_combine() -> None:
    policy = RetentionPolicy(
        keep_within=Duration(days=2),
        keep_within_daily=Duration(days=5),
        keep_monthly=2,
    )
    result = apply(policy)
    # within 2d of 2024-01-01: from 2023-12-30T06; daily within 5d: 27th to 31st
    expected = [
        "2023-12-31T18",
        "2023-12-31T12",
        "2023-12-31T06",
        "2023-12-31T00",
        "2023-12-30T18",
        "2023-12-30T12",
        "2023-12-30T06",
        *t18("2023-12-29", "2023-12-28", "2023-12-27", "2023-11-30"),
    ]
    assert [s.id for s in result.keep] == expected
    assert result.reasons["2023-12-31T18"] == ["within 2d", "monthly snapshot", "daily within 5d"]
    assert result.reasons["2023-12-30T18"] == ["within 2d", "daily within 5d"]
    assert result.reasons["2023-12-30T12"] == ["within 2d"]
    assert result.reasons["2023-12-28T18"] == ["daily within 5d"]


def test_rules_count_independently() -> None:
    # keep_last already keeps the newest snapshot of 31 December; keep_daily still spends one
    # of its two days on that day rather than moving on to older days.
    assert kept(RetentionPolicy(keep_last=4, keep_daily=2)) == [
        "2023-12-31T18",
        "2023-12-31T12",
        "2023-12-31T06",
        "2023-12-31T00",
        "2023-12-30T18",
    ]


# --- ties -------------------------------------------------------------------------------------


TIED = [
    Snap("b", utc(2024, 2, 1, 12)),
    Snap("a", utc(2024, 2, 1, 12)),
    Snap("c", utc(2024, 2, 1, 12)),
    Snap("old", utc(2024, 1, 31, 12)),
]


def test_ties_are_broken_by_id_largest_first() -> None:
    assert kept(RetentionPolicy(keep_last=1), TIED) == ["c"]
    assert kept(RetentionPolicy(keep_last=2), TIED) == ["c", "b"]
    assert kept(RetentionPolicy(keep_daily=1), TIED) == ["c"]
    assert kept(RetentionPolicy(keep_daily=2), TIED) == ["c", "old"]
    assert [s.id for s in apply(RetentionPolicy(keep_daily=2), TIED).remove] == ["b", "a"]


def test_ties_do_not_depend_on_input_order() -> None:
    for seed in range(10):
        shuffled = TIED[:]
        random.Random(seed).shuffle(shuffled)
        assert kept(RetentionPolicy(keep_last=2), shuffled) == ["c", "b"]


def test_same_instant_in_different_zones_is_a_tie() -> None:
    items = [
        Snap("x", datetime(2024, 2, 1, 21, tzinfo=timezone(timedelta(hours=9)))),
        Snap("y", utc(2024, 2, 1, 12)),
        Snap("z", datetime(2024, 2, 1, 7, tzinfo=timezone(timedelta(hours=-5)))),
    ]
    assert kept(RetentionPolicy(keep_last=1), items) == ["z"]
    assert kept(RetentionPolicy(keep_hourly=-1), items) == ["z"]


# --- tags -------------------------------------------------------------------------------------


TAGGED = [
    Snap("s5", utc(2024, 1, 5), ("prod",)),
    Snap("s4", utc(2024, 1, 4), ("prod", "db")),
    Snap("s3", utc(2024, 1, 3), ("db",)),
    Snap("s2", utc(2024, 1, 2), ("db", "prod", "monthly")),
    Snap("s1", utc(2024, 1, 1), ()),
]


def test_keep_tags_single_set() -> None:
    result = apply(RetentionPolicy(keep_tags=(frozenset({"prod"}),)), TAGGED)
    assert [s.id for s in result.keep] == ["s5", "s4", "s2"]
    assert result.reasons["s4"] == ["tag set {prod}"]


def test_keep_tags_needs_every_tag_of_a_set() -> None:
    result = apply(RetentionPolicy(keep_tags=(frozenset({"prod", "db"}),)), TAGGED)
    assert [s.id for s in result.keep] == ["s4", "s2"]
    assert result.reasons["s2"] == ["tag set {db, prod}"]


def test_keep_tags_any_of_several_sets() -> None:
    policy = RetentionPolicy(keep_tags=(frozenset({"monthly"}), frozenset({"db", "prod"})))
    result = apply(policy, TAGGED)
    assert [s.id for s in result.keep] == ["s4", "s2"]
    assert result.reasons["s2"] == ["tag set {monthly}", "tag set {db, prod}"]
    assert [s.id for s in result.remove] == ["s5", "s3", "s1"]


def test_tags_use_up_no_count() -> None:
    policy = RetentionPolicy(keep_last=1, keep_tags=(frozenset({"db"}),))
    result = apply(policy, TAGGED)
    assert [s.id for s in result.keep] == ["s5", "s4", "s3", "s2"]
    assert result.reasons["s5"] == ["last snapshot"]
    assert result.reasons["s4"] == ["tag set {db}"]


def test_tags_on_the_series_with_a_daily_rule() -> None:
    tagged = {"2022-06-15T06", "2021-03-01T00"}
    items = [replace(s, tags=("keep",)) if s.id in tagged else s for s in SERIES]
    policy = RetentionPolicy(keep_daily=1, keep_tags=(frozenset({"keep"}),))
    assert kept(policy, items) == ["2023-12-31T18", "2022-06-15T06", "2021-03-01T00"]


# --- timezones --------------------------------------------------------------------------------


ZONES: list[tzinfo] = [
    UTC,
    timezone(timedelta(hours=-8)),
    timezone(timedelta(hours=5, minutes=45)),
    timezone(timedelta(hours=14)),
    ZoneInfo("Europe/Berlin"),
    ZoneInfo("America/New_York"),
    ZoneInfo("Australia/Lord_Howe"),
]


def test_the_series_in_mixed_zones_gives_the_same_decision() -> None:
    mixed = [
        replace(s, time=s.time.astimezone(ZONES[n % len(ZONES)])) for n, s in enumerate(SERIES)
    ]
    policy = RetentionPolicy(
        keep_last=3,
        keep_hourly=10,
        keep_daily=10,
        keep_weekly=10,
        keep_monthly=10,
        keep_yearly=10,
        keep_within=Duration(days=3),
        keep_within_daily=Duration(days=20),
    )
    local_now = NOW.astimezone(ZoneInfo("Asia/Tokyo"))
    assert apply(policy, mixed, local_now).reasons == apply(policy).reasons


def test_buckets_are_utc_days_not_local_days() -> None:
    items = [
        # 23:30 on 10 March in New York (EDT since that morning) is 03:30 on 11 March in UTC
        Snap("ny-late", datetime(2024, 3, 10, 23, 30, tzinfo=ZoneInfo("America/New_York"))),
        Snap("utc-early", utc(2024, 3, 11, 1)),
        Snap("utc-before", utc(2024, 3, 10, 23)),
    ]
    result = apply(RetentionPolicy(keep_daily=-1), items)
    assert [s.id for s in result.keep] == ["ny-late", "utc-before"]
    assert [s.id for s in result.remove] == ["utc-early"]


def test_order_is_by_instant_not_wall_clock() -> None:
    items = [
        Snap("tokyo", datetime(2024, 3, 1, 10, tzinfo=ZoneInfo("Asia/Tokyo"))),  # 01:00Z
        Snap("utc", utc(2024, 3, 1, 3)),
        Snap("la", datetime(2024, 2, 29, 18, tzinfo=ZoneInfo("America/Los_Angeles"))),  # 02:00Z
    ]
    assert kept(RetentionPolicy(keep_last=2), items) == ["utc", "la"]


def test_keep_within_compares_instants_across_zones() -> None:
    now = datetime(2024, 3, 1, 12, tzinfo=ZoneInfo("Asia/Tokyo"))  # 03:00Z
    items = [
        Snap("in", datetime(2024, 2, 29, 22, 30, tzinfo=ZoneInfo("America/New_York"))),  # 03:30Z
        Snap("edge", utc(2024, 3, 1, 2)),  # exactly now - 1h: out
        Snap("out", utc(2024, 3, 1, 1, 59)),
    ]
    assert kept(RetentionPolicy(keep_within=Duration(hours=1)), items, now) == ["in"]


def test_weeks_across_new_year_in_utc() -> None:
    # Friday 1 January 2021 belongs to ISO week 2020-W53, with Monday 28 December 2020.
    items = [
        Snap("mon", utc(2020, 12, 28, 9)),
        Snap("fri", utc(2021, 1, 1, 9)),
        Snap("next-mon", utc(2021, 1, 4, 9)),
        Snap("late-sun", datetime(2021, 1, 3, 23, tzinfo=timezone(timedelta(hours=-2)))),
    ]
    # 23:00 at -02:00 is Monday 01:00 UTC, so it shares next-mon's week and loses to it.
    assert kept(RetentionPolicy(keep_weekly=-1), items) == ["next-mon", "fri"]


# --- the empty policy and bad input -----------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        RetentionPolicy(),
        RetentionPolicy(keep_last=0, keep_daily=0),
        RetentionPolicy(keep_within=Duration(), keep_within_daily=parse_duration("0h")),
    ],
)
def test_empty_policy_refuses(policy: RetentionPolicy) -> None:
    assert policy.is_empty()
    with pytest.raises(UsageError) as info:
        apply(policy)
    assert "every snapshot" in info.value.message
    with pytest.raises(UsageError):
        apply_retention([], policy, NOW)


def test_empty_policy_allowed_removes_everything() -> None:
    result = apply_retention(SERIES, RetentionPolicy(), NOW, allow_empty=True)
    assert result.keep == []
    assert result.reasons == {}
    assert [s.id for s in result.remove] == sorted(ALL_IDS, reverse=True)


@pytest.mark.parametrize(
    "policy",
    [
        RetentionPolicy(keep_last=1),
        RetentionPolicy(keep_yearly=-1),
        RetentionPolicy(keep_within=Duration(hours=1)),
        RetentionPolicy(keep_within_monthly=Duration(years=1)),
        RetentionPolicy(keep_tags=(frozenset({"x"}),)),
    ],
)
def test_one_rule_is_not_empty(policy: RetentionPolicy) -> None:
    assert not policy.is_empty()


def test_no_items() -> None:
    result: RetentionResult[Snap] = apply_retention([], RetentionPolicy(keep_last=3), NOW)
    assert result == RetentionResult(keep=[], remove=[], reasons={})


@pytest.mark.parametrize("field", ["keep_last", "keep_daily", "keep_yearly"])
@pytest.mark.parametrize("value", [-2, -100])
def test_counts_below_minus_one_are_rejected(field: str, value: int) -> None:
    with pytest.raises(UsageError, match=field):
        policy_with(**{field: value})


def test_bool_count_is_rejected() -> None:
    with pytest.raises(UsageError):
        RetentionPolicy(keep_last=True)


def test_empty_tag_set_is_rejected() -> None:
    with pytest.raises(UsageError, match="empty tag set"):
        RetentionPolicy(keep_tags=(frozenset({"prod"}), frozenset()))


def test_naive_times_are_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="now"):
        apply_retention(SERIES, RetentionPolicy(keep_last=1), datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        apply_retention([Snap("n", datetime(2024, 1, 1))], RetentionPolicy(keep_last=1), NOW)


def test_duplicate_ids_are_a_caller_bug() -> None:
    items = [Snap("same", utc(2024, 1, 1)), Snap("same", utc(2024, 1, 2))]
    with pytest.raises(ValueError, match="same"):
        apply_retention(items, RetentionPolicy(keep_last=1), NOW)


def test_policy_is_frozen_and_keyword_only() -> None:
    policy = RetentionPolicy(keep_last=1)
    with pytest.raises(AttributeError):
        policy.keep_last = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetentionPolicy(1)  # type: ignore[call-arg]


# --- output shape -----------------------------------------------------------------------------


def test_output_is_newest_first_and_partitions_the_input() -> None:
    shuffled = SERIES[:]
    random.Random(7).shuffle(shuffled)
    result = apply(RetentionPolicy(keep_daily=30, keep_monthly=12), shuffled)
    keep_ids = [s.id for s in result.keep]
    remove_ids = [s.id for s in result.remove]
    assert keep_ids == sorted(keep_ids, reverse=True)
    assert remove_ids == sorted(remove_ids, reverse=True)
    assert set(keep_ids).isdisjoint(remove_ids)
    assert set(keep_ids) | set(remove_ids) == ALL_IDS
    assert len(keep_ids) + len(remove_ids) == len(SERIES)
    assert all(isinstance(s, Snap) for s in result.keep)


def test_accepts_any_iterable() -> None:
    assert kept(RetentionPolicy(keep_last=1), tuple(SERIES)) == ["2023-12-31T18"]
    result = apply_retention(iter(SERIES), RetentionPolicy(keep_last=1), NOW)
    assert [s.id for s in result.keep] == ["2023-12-31T18"]


# --- grouping ---------------------------------------------------------------------------------


def test_group_items_then_apply_per_group() -> None:
    items = [
        Snap("a1", utc(2024, 1, 1), host="a"),
        Snap("b1", utc(2024, 1, 1), host="b"),
        Snap("a2", utc(2024, 1, 2), host="a"),
        Snap("b2", utc(2024, 1, 3), host="b"),
        Snap("a3", utc(2024, 1, 3), host="a"),
    ]
    groups = group_items(items, lambda s: s.host)
    assert list(groups) == ["a", "b"]
    assert [s.id for s in groups["a"]] == ["a1", "a2", "a3"]
    assert [s.id for s in groups["b"]] == ["b1", "b2"]
    policy = RetentionPolicy(keep_last=1)
    decided = {host: apply_retention(g, policy, NOW) for host, g in groups.items()}
    assert [s.id for s in decided["a"].keep] == ["a3"]
    assert [s.id for s in decided["b"].keep] == ["b2"]


def test_group_items_by_tuple_key() -> None:
    items = [("h1", ("/a",)), ("h1", ("/b",)), ("h1", ("/a",))]
    groups = group_items(items, lambda item: item)
    assert groups == {("h1", ("/a",)): [items[0], items[2]], ("h1", ("/b",)): [items[1]]}
    assert group_items([], lambda item: item) == {}


# --- OSB backup manager retention -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "period", "expected"),
    [
        ("FILES", 5, RetentionPolicy(keep_last=5)),
        ("DAYS", 30, RetentionPolicy(keep_within=Duration(days=30))),
        ("HOURS", 12, RetentionPolicy(keep_within=Duration(hours=12))),
        ("days", 7, RetentionPolicy(keep_within=Duration(days=7))),
        (" Files ", 1, RetentionPolicy(keep_last=1)),
    ],
)
def test_from_osb(kind: str, period: int, expected: RetentionPolicy) -> None:
    assert from_osb(kind, period) == expected


def test_from_osb_days_on_the_series() -> None:
    assert len(kept(from_osb("DAYS", 30))) == 3 + 29 * 4
    assert kept(from_osb("HOURS", 13)) == [
        "2023-12-31T18",
        "2023-12-31T12",
    ]
    assert kept(from_osb("FILES", 2)) == ["2023-12-31T18", "2023-12-31T12"]


@pytest.mark.parametrize(("kind", "period"), [("WEEKS", 1), ("", 1), ("DAYS", 0), ("FILES", -1)])
def test_from_osb_rejects(kind: str, period: int) -> None:
    with pytest.raises(UsageError):
        from_osb(kind, period)


# --- properties -------------------------------------------------------------------------------

prop_zones = st.sampled_from(ZONES)
prop_times = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2025, 1, 1), timezones=prop_zones
)
# Coarse times on a 90-minute grid make ties and shared buckets common.
grid_times = st.integers(0, 2000).map(lambda n: utc(2023, 1, 1) + timedelta(minutes=90 * n))
any_times = prop_times | grid_times
tag_names = st.sampled_from(["prod", "db", "monthly"])


@st.composite
def snaps(draw: st.DrawFn, max_size: int = 40) -> list[Snap]:
    times = draw(st.lists(any_times, max_size=max_size))
    return [
        Snap(
            f"s{n:03d}",
            t,
            tuple(draw(st.lists(tag_names, max_size=3, unique=True))),
        )
        for n, t in enumerate(times)
    ]


counts = st.none() | st.integers(-1, 6)
spans = st.none() | st.builds(
    Duration,
    years=st.integers(0, 2),
    months=st.integers(0, 13),
    days=st.integers(0, 40),
    hours=st.integers(0, 50),
)
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    keep_within=spans,
    keep_within_hourly=spans,
    keep_within_daily=spans,
    keep_within_weekly=spans,
    keep_within_monthly=spans,
    keep_within_yearly=spans,
    keep_tags=st.lists(st.frozensets(tag_names, min_size=1), max_size=2).map(tuple),
)


@PROPERTY
@given(snaps(), policies, prop_times)
def test_keep_and_remove_partition_the_input(
    items: list[Snap], policy: RetentionPolicy, now: datetime
) -> None:
    result = apply_retention(items, policy, now, allow_empty=True)
    keep_ids = [s.id for s in result.keep]
    remove_ids = [s.id for s in result.remove]
    assert set(keep_ids).isdisjoint(remove_ids)
    assert sorted(keep_ids + remove_ids) == sorted(s.id for s in items)
    assert set(result.reasons) == set(keep_ids)
    assert all(result.reasons.values())
    for listed in (result.keep, result.remove):
        keys = [instant_then_id(s) for s in listed]
        assert keys == sorted(keys, reverse=True)
    if policy.is_empty():
        assert result.keep == []


@PROPERTY
@given(snaps(), policies, prop_times)
def test_empty_policies_raise_without_allow_empty(
    items: list[Snap], policy: RetentionPolicy, now: datetime
) -> None:
    if policy.is_empty():
        with pytest.raises(UsageError):
            apply_retention(items, policy, now)
    else:
        apply_retention(items, policy, now)


@PROPERTY
@given(snaps(), st.integers(-1, 50), prop_times)
def test_keep_last_alone_keeps_exactly_the_newest(items: list[Snap], n: int, now: datetime) -> None:
    assume(n != 0)
    result = apply_retention(items, RetentionPolicy(keep_last=n), now)
    assert [s.id for s in result.keep] == n_newest(items, n)
    if n != -1:
        assert len(result.keep) == min(n, len(items))


@PROPERTY
@given(snaps(), st.sampled_from(sorted(BUCKET_RULES)), st.integers(-1, 8), prop_times)
def test_a_bucket_rule_alone_matches_the_oracle(
    items: list[Snap], rule: str, n: int, now: datetime
) -> None:
    assume(n != 0)
    key, _ = BUCKET_RULES[rule]
    result = apply_retention(items, policy_with(**{rule: n}), now)
    assert {s.id for s in result.keep} == newest_per_bucket(items, key, n)


@PROPERTY
@given(snaps(), st.integers(0, 60), st.integers(0, 100), prop_times)
def test_keep_within_alone_keeps_what_is_newer_than_now_minus_span(
    items: list[Snap], days: int, hours: int, now: datetime
) -> None:
    assume(days or hours)
    result = apply_retention(
        items, RetentionPolicy(keep_within=Duration(days=days, hours=hours)), now
    )
    # In UTC a span of days and hours is a plain timedelta; compare instants.
    cutoff = now.astimezone(UTC) - timedelta(days=days, hours=hours)
    assert {s.id for s in result.keep} == {s.id for s in items if s.time > cutoff}


idempotent_policies = st.builds(RetentionPolicy, keep_last=counts, keep_daily=counts).filter(
    lambda p: not p.is_empty()
)


@PROPERTY
@given(snaps(), idempotent_policies, prop_times)
def test_applying_again_to_keep_removes_nothing(
    items: list[Snap], policy: RetentionPolicy, now: datetime
) -> None:
    first = apply_retention(items, policy, now)
    second = apply_retention(first.keep, policy, now)
    assert second.remove == []
    assert second.keep == first.keep


@PROPERTY
@given(snaps(), policies, prop_times, st.randoms(use_true_random=False), prop_zones)
def test_decision_ignores_input_order_and_zone_spelling(
    items: list[Snap],
    policy: RetentionPolicy,
    now: datetime,
    rnd: random.Random,
    zone: tzinfo,
) -> None:
    first = apply_retention(items, policy, now, allow_empty=True)
    respelled = [replace(s, time=s.time.astimezone(zone)) for s in items]
    rnd.shuffle(respelled)
    second = apply_retention(respelled, policy, now.astimezone(zone), allow_empty=True)
    assert second.reasons == first.reasons
    assert [s.id for s in second.remove] == [s.id for s in first.remove]


@PROPERTY
@given(snaps(), policies, prop_times)
def test_the_union_of_single_rules(
    items: list[Snap], policy: RetentionPolicy, now: datetime
) -> None:
    # Rules count independently, so the whole policy keeps what each rule keeps alone.
    assume(not policy.is_empty())
    whole = {s.id for s in apply_retention(items, policy, now).keep}
    union: set[str] = set()
    for name in RetentionPolicy.__dataclass_fields__:
        value = getattr(policy, name)
        single = policy_with(**{name: value})
        if not single.is_empty():
            union |= {s.id for s in apply_retention(items, single, now).keep}
    assert whole == union
