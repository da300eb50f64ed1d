"""The repository's ``verify:`` block: its keys, their defaults and their errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from safehold.config import load_config
from safehold.config.models import Config
from safehold.errors import ConfigError
from safehold.policy import Duration


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "safehold.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(str(path), env={})


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_every_key_and_the_defaults(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """\
        repository:
          location: /r
          verify: {period: 4w, schedule: "0 3 * * *", timezone: Europe/Berlin, margin: 2,
                   paused: true, timeout: 2h, retries: 1, retry_delay: 5m}
        """,
    )
    assert cfg.repository is not None and cfg.repository.verify is not None
    verify = cfg.repository.verify
    assert (verify.period, verify.schedule, verify.timezone) == ("4w", "0 3 * * *", "Europe/Berlin")
    assert verify.period_duration() == Duration(days=28)
    assert (verify.margin, verify.paused, verify.timeout) == (2.0, True, 7200.0)
    assert (verify.retries, verify.retry_delay) == (1, 300.0)
    cfg = load(tmp_path, "repository: {location: /r, verify: {}}\n")
    assert cfg.repository is not None and cfg.repository.verify is not None
    verify = cfg.repository.verify
    assert (verify.period, verify.schedule, verify.margin) == ("30d", "@daily", 1.25)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{period: 30x}", "invalid duration '30x'"),
        ("{period: 0d}", "longer than zero"),
        ("{period: 30s}", "invalid duration"),  # forget's units: no seconds
        ("{schedule: 'every day'}", "schedule"),
        ("{timezone: Mars/Olympus}", "unknown time zone"),
        ("{margin: 0.5}", "margin"),
        ("{periods: 30d}", "periods"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, block: str, message: str) -> None:
    found = problems(tmp_path, f"repository: {{location: /r, verify: {block}}}\n")
    assert "repository.verify" in found and message in found


def test_a_destination_refuses_verify(tmp_path: Path) -> None:
    found = problems(
        tmp_path, "destinations: [{location: /x, password: y, verify: {period: 30d}}]\n"
    )
    assert "verify belongs in the repository: block" in found


def test_a_source_s_verify_key_stays_reserved(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "repository: /r\nsources:\n  a: {type: directory, paths: [/x], verify: {period: 1d}}\n",
    )
    assert any("sources.a.verify" in w and "ignores it" in w for w in cfg.warnings)
