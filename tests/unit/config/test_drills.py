"""The ``drill:`` block: its forms, and strict messages for what does not fit."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from safehold.config import load_config
from safehold.config.models import Config
from safehold.errors import ConfigError
from safehold.service.drills import drill_plans


def load(tmp_path: Path, block: str, kind: str = "type: sqlite\n    path: /x.db") -> Config:
    path = tmp_path / "safehold.yaml"
    path.write_text(
        "repository: /r\nsources:\n  db:\n    " + kind + "\n" + textwrap.indent(block, "    ")
    )
    return load_config(str(path), env={})


def problem(tmp_path: Path, block: str, kind: str = "type: sqlite\n    path: /x.db") -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, block, kind)
    return str(info.value)


def test_a_drill_with_every_key_makes_a_drill_plan(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        'drill:\n  schedule: "0 4 * * 0"\n  timezone: Europe/Berlin\n  target: rotating\n'
        "  rto_target: 15m\n  timeout: 2h\n  check: {default: {sample_keys: 3}}\n"
        "  on_failure: {finish_chain: true}\n",
    )
    drill = cfg.sources["db"].common.drill
    assert drill is not None
    assert (drill.target, drill.rto_target, drill.timeout) == ("rotating", 900.0, 7200.0)
    assert drill.on_failure.finish_chain and drill.check.form == "default"
    assert cfg.plans == {}  # the source itself has no schedule
    [spec] = drill_plans(cfg).values()
    assert spec.key == "default/db.drill" and spec.kind.value == "drill"
    assert spec.schedule.timezone == "Europe/Berlin" and spec.timeout == 7200.0


def test_a_drill_without_a_schedule_is_no_plan_and_defaults_to_the_kinds_check(
    tmp_path: Path,
) -> None:
    cfg = load(tmp_path, "drill: {check: default}\n")
    drill = cfg.sources["db"].common.drill
    assert drill is not None and drill.check.form == "default" and drill.target == "latest"
    assert drill_plans(cfg) == {}


def test_a_query_needs_its_expectation_and_a_database_kind(tmp_path: Path) -> None:
    pg = "type: postgres\n    url: postgresql://u@h/db"
    cfg = load(tmp_path, "drill: {check: {query: 'SELECT 1', expect: 1, database: db}}\n", pg)
    drill = cfg.sources["db"].common.drill
    assert drill is not None and drill.check.expect == "1" and drill.check.form == "query"
    assert "a query needs expect" in problem(tmp_path, "drill: {check: {query: 'SELECT 1'}}\n", pg)
    assert "expect needs a query" in problem(tmp_path, "drill: {check: {expect: 1}}\n", pg)
    assert "runs SQL, which a sqlite source has not" in problem(
        tmp_path, "drill: {check: {query: 'SELECT 1', expect: 1}}\n"
    )


def test_one_form_of_check_and_no_unknown_keys(tmp_path: Path) -> None:
    assert "not query and command" in problem(
        tmp_path,
        "drill: {check: {query: x, expect: y, command: 'true'}}\n",
        "type: postgres\n    url: postgresql://u@h/db",
    )
    assert "tables" in problem(tmp_path, "drill: {check: {tables: 3}}\n")
    assert "not found on PATH: no-such-check-tool" in problem(
        tmp_path, "drill: {check: {command: no-such-check-tool --fast}}\n"
    )
    assert "'latest' or 'rotating'" in problem(tmp_path, "drill: {target: oldest}\n")
    assert "not a duration" in problem(tmp_path, "drill: {rto_target: soon}\n")


def test_a_kind_without_a_sandbox_is_refused(tmp_path: Path) -> None:
    message = problem(tmp_path, "drill: {}\n", "type: command\n    command: [echo, hi]")
    assert "there is none for 'command'" in message and "remove drill:" in message
