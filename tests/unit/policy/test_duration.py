from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehold.errors import UsageError
from safehold.policy.duration import Duration, parse_duration

# No deadline: these check decisions, not speed, and a busy CI runner must not fail them.
PROPERTY = settings(deadline=None)

BERLIN = ZoneInfo("Europe/Berlin")


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", Duration(days=30)),
        ("2w", Duration(days=14)),
        ("1y6m", Duration(years=1, months=6)),
        ("12h", Duration(hours=12)),
        ("1y2m3d4h", Duration(years=1, months=2, days=3, hours=4)),
        ("1w2d", Duration(days=9)),
        ("4h3d2m1y", Duration(years=1, months=2, days=3, hours=4)),
        ("0d", Duration()),
        ("007d", Duration(days=7)),
        ("  30d\n", Duration(days=30)),
        ("100y", Duration(years=100)),
    ],
)
def test_parse_accepts(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "30",
        "d",
        "1.5d",
        "-1d",
        "+1d",
        "1D",
        "1M",
        "1s",
        "5min",
        "1 d",
        "1y 2m",
        "1d1d",
        "2w3w",
        "d30",
        "30dd",
        "\uff13\uff10d",  # fullwidth "30d"
        "1e3d",
        "1" * 5000 + "d",
    ],
)
def test_parse_rejects_with_an_example(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text)
    assert "30d" in info.value.message
    assert len(info.value.message) < 200


def test_parse_error_hint_names_the_units() -> None:
    with pytest.raises(UsageError) as info:
        parse_duration("3x")
    assert info.value.hint is not None
    assert "m = months" in info.value.hint


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (Duration(days=30), "30d"),
        (Duration(years=1, months=6), "1y6m"),
        (Duration(years=1, months=2, days=3, hours=4), "1y2m3d4h"),
        (Duration(hours=12), "12h"),
        (Duration(days=14), "14d"),
        (Duration(), "0d"),
    ],
)
def test_str_is_canonical(duration: Duration, text: str) -> None:
    assert str(duration) == text


def test_weeks_print_back_as_days() -> None:
    assert str(parse_duration("2w")) == "14d"


@pytest.mark.parametrize(
    "kwargs",
    [{"days": -1}, {"hours": -5}, {"years": True}, {"months": 1.5}],
)
def test_duration_rejects_bad_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Duration(**kwargs)  # type: ignore[arg-type]


def test_is_zero() -> None:
    assert Duration().is_zero()
    assert parse_duration("0y0m0d0h").is_zero()
    assert not Duration(hours=1).is_zero()


def test_duration_is_frozen() -> None:
    d = Duration(days=1)
    with pytest.raises(AttributeError):
        d.days = 2  # type: ignore[misc]


# --- subtraction ---------------------------------------------------------------------------


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        # months clamp to the end of a shorter month
        ("1m", utc(2023, 3, 31, 10), utc(2023, 2, 28, 10)),
        ("1m", utc(2024, 3, 31, 10), utc(2024, 2, 29, 10)),
        ("1m", utc(2024, 5, 31), utc(2024, 4, 30)),
        ("1m", utc(2024, 1, 31), utc(2023, 12, 31)),
        ("1m", utc(2024, 3, 15, 8, 30, 5), utc(2024, 2, 15, 8, 30, 5)),
        ("13m", utc(2024, 1, 31), utc(2022, 12, 31)),
        ("1y", utc(2024, 2, 29), utc(2023, 2, 28)),
        ("4y", utc(2024, 2, 29), utc(2020, 2, 29)),
        ("1y1m", utc(2024, 3, 31), utc(2023, 2, 28)),
        ("12m", utc(2024, 7, 4), utc(2023, 7, 4)),
        # months first, then days: 31 Mar - 1m = 29 Feb, minus 1d = 28 Feb
        ("1m1d", utc(2024, 3, 31), utc(2024, 2, 28)),
        ("30d", utc(2024, 3, 1), utc(2024, 1, 31)),
        ("2w", utc(2024, 1, 10), utc(2023, 12, 27)),
        ("1d", utc(2024, 3, 1), utc(2024, 2, 29)),
        ("12h", utc(2024, 1, 1, 6), utc(2023, 12, 31, 18)),
        ("1y2m3d4h", utc(2024, 5, 10, 2), utc(2023, 3, 6, 22)),
        ("0d", utc(2024, 5, 10, 2), utc(2024, 5, 10, 2)),
    ],
)
def test_subtract_from(text: str, start: datetime, expected: datetime) -> None:
    assert parse_duration(text).subtract_from(start) == expected


def test_subtract_keeps_zone_and_naive_works() -> None:
    tz = timezone(timedelta(hours=5, minutes=30))
    result = Duration(months=1).subtract_from(datetime(2024, 3, 31, 1, tzinfo=tz))
    assert result.tzinfo is tz
    assert result.replace(tzinfo=None) == datetime(2024, 2, 29, 1)
    assert Duration(months=1, hours=2).subtract_from(datetime(2024, 3, 31, 1)) == datetime(
        2024, 2, 28, 23
    )


def test_days_are_wall_clock_days_across_dst() -> None:
    # Berlin moved from +01:00 to +02:00 at 02:00 on 31 March 2024: that day had 23 hours.
    start = datetime(2024, 3, 31, 12, tzinfo=BERLIN)
    result = Duration(days=1).subtract_from(start)
    assert result.replace(tzinfo=None) == datetime(2024, 3, 30, 12)
    # Through UTC: subtracting datetimes that share a tzinfo ignores the offsets.
    assert start.astimezone(UTC) - result.astimezone(UTC) == timedelta(hours=23)


def test_hours_are_elapsed_hours_across_dst() -> None:
    start = datetime(2024, 3, 31, 12, tzinfo=BERLIN)  # 10:00 UTC
    result = Duration(hours=12).subtract_from(start)
    assert result.astimezone(UTC) == utc(2024, 3, 30, 22)
    assert result.replace(tzinfo=None) == datetime(2024, 3, 30, 23)  # still CET then
    assert result.tzinfo is BERLIN


def test_subtracting_before_year_one_gives_the_earliest_time() -> None:
    start = utc(2024, 1, 1)
    assert Duration(years=5000).subtract_from(start) == datetime.min.replace(tzinfo=UTC)
    assert Duration(days=10**12).subtract_from(start) == datetime.min.replace(tzinfo=UTC)
    assert Duration(hours=10**15).subtract_from(start) == datetime.min.replace(tzinfo=UTC)
    assert Duration(years=2023, days=1).subtract_from(start) == datetime.min.replace(tzinfo=UTC)
    assert Duration(years=2022).subtract_from(start) == utc(2, 1, 1)


# --- properties ----------------------------------------------------------------------------

durations = st.builds(
    Duration,
    years=st.integers(0, 50),
    months=st.integers(0, 40),
    days=st.integers(0, 1000),
    hours=st.integers(0, 2000),
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=9, minutes=30)), BERLIN]
)
moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=zones
)


@PROPERTY
@given(durations)
def test_str_round_trips(duration: Duration) -> None:
    assert parse_duration(str(duration)) == duration


@PROPERTY
@given(
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
)
def test_parse_matches_the_parts(y: int, m: int, w: int, d: int, h: int) -> None:
    text = f"{y}y{m}m{w}w{d}d{h}h"
    assert parse_duration(text) == Duration(years=y, months=m, days=7 * w + d, hours=h)


@PROPERTY
@given(durations, moments)
def test_subtraction_never_moves_forward(duration: Duration, moment: datetime) -> None:
    assert duration.subtract_from(moment) <= moment


@PROPERTY
@given(st.integers(0, 10_000), st.integers(0, 10_000), moments)
def test_hours_and_days_in_utc_are_plain_timedeltas(
    days: int, hours: int, moment: datetime
) -> None:
    moment = moment.astimezone(UTC)
    assert Duration(days=days, hours=hours).subtract_from(moment) == moment - timedelta(
        days=days, hours=hours
    )


@PROPERTY
@given(st.integers(0, 10_000), moments)
def test_hours_are_elapsed_in_any_zone(hours: int, moment: datetime) -> None:
    result = Duration(hours=hours).subtract_from(moment)
    assert result.astimezone(UTC) == moment.astimezone(UTC) - timedelta(hours=hours)


@PROPERTY
@given(st.integers(0, 600), moments)
def test_months_land_on_the_right_month_and_clamp(months: int, moment: datetime) -> None:
    result = Duration(months=months).subtract_from(moment)
    assert (moment.year * 12 + moment.month) - (result.year * 12 + result.month) == months
    assert result.day == moment.day or (result.day < moment.day and _is_month_end(result))
    assert result.time() == moment.time()


def _is_month_end(t: datetime) -> bool:
    return (t.replace(tzinfo=None) + timedelta(days=1)).day == 1
