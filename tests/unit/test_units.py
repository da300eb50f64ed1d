"""One way of writing sizes and durations for people (safehold.units)."""

from __future__ import annotations

import pytest

from safehold import units


@pytest.mark.parametrize(
    ("value", "places", "expected"),
    [
        (0, 1, "0 B"),
        (1023, 1, "1023 B"),
        (1024, 1, "1.0 KiB"),
        (1536, 2, "1.50 KiB"),
        (5 * 1024**3 + 1024**3 // 4, 2, "5.25 GiB"),
        (3 * 1024**5, 1, "3.0 PiB"),
        (2048 * 1024**5, 1, "2048.0 PiB"),  # beyond the last unit it stays in it
        (-2048, 1, "-2.0 KiB"),
    ],
)
def test_sizes_are_written_in_binary_units(value: int, places: int, expected: str) -> None:
    assert units.size(value, places=places) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0.0 s"),
        (4.14, "4.1 s"),
        (59.94, "59.9 s"),
        (60, "1 min"),
        (182, "3 min 2 s"),
        (900, "15 min"),
        (1300, "21 min 40 s"),
        (3600, "1 h"),
        (3840, "1 h 4 min"),
        (2 * 86400 + 3 * 3600 + 59, "2 d 3 h"),
        (86400, "1 d"),
        (-90, "-1 min 30 s"),
    ],
)
def test_durations_keep_two_units_and_drop_a_zero(seconds: float, expected: str) -> None:
    assert units.duration(seconds) == expected


def test_unknown_values_are_written_as_the_caller_asks() -> None:
    assert units.size(None) == "-"
    assert units.size(None, unknown="") == ""
    assert units.duration(None) == "-"
    assert units.duration(None, unknown="never") == "never"
