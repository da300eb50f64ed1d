"""Which point a drill takes: the newest, or the next chain back (rotating)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from safehold.runs.drill import Point, choose_point

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def points() -> list[Point]:
    # Chains a (oldest), b, c (newest), two points each; given out of order.
    out = []
    for i, chain in enumerate("aabbcc"):
        out.append(Point(f"s{i}", T0 + timedelta(hours=i), chain))
    return out[::-1][2:] + out[::-1][:2]


def test_latest_takes_the_newest_whatever_was_drilled() -> None:
    assert choose_point(points(), "latest", None) == Point("s5", T0 + timedelta(hours=5), "c")
    assert choose_point(points(), "latest", "s1") is not None
    assert choose_point(points(), "latest", "s1").snapshot == "s5"  # type: ignore[union-attr]
    assert choose_point([], "rotating", None) is None


def test_rotating_walks_back_one_chain_a_drill_and_starts_again() -> None:
    taken = []
    last = None
    for _ in range(5):
        point = choose_point(points(), "rotating", last)
        assert point is not None
        taken.append(point.snapshot)
        last = point.snapshot
    assert taken == ["s5", "s3", "s1", "s5", "s3"]


def test_rotating_starts_again_when_the_last_drilled_point_is_gone() -> None:
    point = choose_point(points(), "rotating", "forgotten")
    assert point is not None and point.snapshot == "s5"
