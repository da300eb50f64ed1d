from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from safehold.config import load_config
from safehold.errors import ConfigError
from safehold.policy import Duration, RetentionPolicy


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "safehold.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(str(path), env={})


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_a_plan_with_every_key(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """\
        service: {state_dir: /srv/safehold, workers: 3}
        sources:
          db:
            type: directory
            paths: [/x]
            schedule: "@daily-random"
            timezone: Europe/Berlin
            project: shop
            min_interval: 1h
            on_overlap: skip
            catch_up: none
            start_window: 30m
            retries: 2
            retry_delay: 5m
            retention: {keep_daily: 7, keep_within: 2w, keep_tags: ["legal,hold"]}
          manual:
            type: directory
            paths: [/y]
        """,
    )
    assert list(cfg.plans) == ["db"]
    common = cfg.sources["db"].common
    assert (common.project, common.timezone, common.min_interval) == ("shop", "Europe/Berlin", 3600)
    assert (common.overlap, common.catch_up, common.start_window) == ("skip", "none", 1800)
    assert (common.retries, common.retry_delay) == (2, 300)
    assert common.retention is not None
    assert common.retention.policy() == RetentionPolicy(
        keep_daily=7, keep_within=Duration(days=14), keep_tags=(frozenset({"legal", "hold"}),)
    )
    assert cfg.service.state_dir == "/srv/safehold" and cfg.service.workers == 3
    assert cfg.sources["manual"].common.overlap == "queue"  # service-backup's default: wait


def test_osb_retention(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """\
        sources:
          db:
            {type: directory, paths: [/x], schedule: "@hourly", retention: {type: files, period: 5}}
        """,
    )
    retention = cfg.sources["db"].common.retention
    assert retention is not None and retention.policy() == RetentionPolicy(keep_last=5)


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ('schedule: "* * * * * 99"', "sources.db.schedule"),
        ('schedule: "* * * * * 99"', "out of range"),
        ('schedule: "@daily"\n    timezone: Mars/Base', "sources.db.timezone: unknown time zone"),
        ("on_overlap: wait", "on_overlap"),
        ("project: 'a b'", "a project name is"),
        ("retention: {}", "give at least one keep_* rule"),
        ("retention: {keep_daily: 7, type: DAYS, period: 3}", "not both"),
        ("retention: {type: WEEKS, period: 3}", "unknown OSB retention type"),
        ("retention: {keep_within: 3q}", "sources.db.retention: invalid duration '3q'"),
        ("min_interval: soon", "not a duration"),
    ],
)
def test_bad_plan_keys_name_the_key(tmp_path: Path, keys: str, says: str) -> None:
    text = "sources:\n  db:\n    type: directory\n    paths: [/x]\n    " + keys + "\n"
    assert says in problems(tmp_path, text)


def test_service_block_is_checked(tmp_path: Path) -> None:
    assert "service.workers" in problems(tmp_path, "service: {workers: 0}\n")
    assert "service.colour" in problems(tmp_path, "service: {colour: red}\n")


def test_the_database_url_is_a_secret(tmp_path: Path) -> None:
    cfg = load(tmp_path, "service: {database: 'postgresql://u:hunter2@db/safehold'}\n")
    assert "hunter2" not in repr(cfg.service)
    assert cfg.service.database is not None
    assert cfg.service.database.get_secret_value().endswith("@db/safehold")
