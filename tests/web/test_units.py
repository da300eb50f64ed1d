"""The dashboard's pure parts: charts, formats, and a plan's verdict and RPO target."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from starlette.requests import Request
from starlette.responses import Response

from safehold.api.tokens import Principal
from safehold.catalog import TokenRole
from safehold.errors import Forbidden, UsageError
from safehold.policy.schedule import parse_schedule
from safehold.service.plans import PlanSpec
from safehold.web.format import ago, duration, size, when
from safehold.web.overview import _verdict, rpo_target
from safehold.web.session import MAX_PROJECTS, Grant, Session, csrf_for, set_cookie, with_token
from safehold.web.svg import Bar, Cell, Span, bar_chart, strip, timeline

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_charts_escape_their_text_and_scale_to_the_largest() -> None:
    drawn = strip([Cell("failed", "<b>1 failed</b>"), Cell("none", "no slot")], label='a "x"')
    assert "&lt;b&gt;1 failed&lt;/b&gt;" in drawn and "<b>" not in drawn
    assert 'aria-label="a &quot;x&quot;"' in drawn and drawn.count("<rect") == 2
    bars = bar_chart([Bar(10, "ten"), Bar(5, "five"), Bar(0, "none")], label="l", unit="s")
    heights = [float(h) for h in re.findall(r' height="([\d.]+)"><title>', bars)]
    assert heights == [120.0, 60.0, 0.0]
    assert ">10 s</text>" in bars
    line = timeline([Span(0, 1, "lock", "succeeded", "t"), Span(1, 3, "dump", "failed", "u")],
                    label="phases")  # fmt: skip
    assert line.count("<rect") == 2 and "dump" in line


def test_formats() -> None:
    assert (size(None), size(512), size(1536), size(5 * 1024**3)) == (
        "-", "512 B", "1.5 KiB", "5.0 GiB",
    )  # fmt: skip
    assert (duration(None), duration(4.12), duration(125), duration(3 * 3600 + 120)) == (
        "-", "4.1 s", "2 min 5 s", "3 h 2 min",
    )  # fmt: skip
    assert duration(2 * 86400 + 3600) == "2 d 1 h"
    assert ago(None, NOW) == "never" and ago(NOW - timedelta(seconds=90), NOW) == "1 min 30 s ago"
    assert when(NOW) == "2026-12-07 12:00:00 UTC"


def _spec(expression: str) -> PlanSpec:
    return PlanSpec(project="default", name="p", config_path="/nonexistent",
                    schedule=parse_schedule(expression, key="default/p"))  # fmt: skip


def test_the_rpo_target_is_twice_the_schedules_period() -> None:
    assert rpo_target(_spec("@every 30m"), NOW) == 3600
    assert rpo_target(_spec("0 */6 * * *"), NOW) == 12 * 3600
    assert rpo_target(_spec("@daily"), NOW) == 2 * 86400


def test_a_plans_verdict() -> None:
    row = SimpleNamespace(run_state="succeeded", slot_state="succeeded", slot_at=NOW, run_id=1)
    assert _verdict(False, row, 100.0, 7200.0, NOW) == "ok"
    assert _verdict(True, row, 100.0, 7200.0, NOW) == "paused"
    assert _verdict(False, row, 9000.0, 7200.0, NOW) == "at_risk"
    failed = SimpleNamespace(run_state="failed", slot_state=None, slot_at=None, run_id=1)
    assert _verdict(False, failed, None, 7200.0, NOW) == "failing"
    assert _verdict(False, None, None, 7200.0, NOW) == "new"
    missed = SimpleNamespace(run_state=None, slot_state="missed", slot_at=NOW, run_id=None,
                             created_at=NOW)  # fmt: skip
    assert _verdict(False, missed, None, 7200.0, NOW) == "at_risk"
    # Never run: new while younger than its target, then at risk (as the RPO alert says).
    never = SimpleNamespace(run_state=None, slot_state=None, slot_at=None, run_id=None,
                            created_at=NOW - timedelta(hours=1))  # fmt: skip
    assert _verdict(False, never, None, 7200.0, NOW) == "new"
    assert _verdict(False, never, None, 1800.0, NOW) == "at_risk"
    assert _verdict(False, never, None, None, NOW) == "new"


def test_the_csrf_value_depends_on_the_token() -> None:
    assert csrf_for("shk_a") != csrf_for("shk_b") and len(csrf_for("shk_a")) == 64
    assert csrf_for("shk_a") == csrf_for("shk_a")
    # Keyed with all the session's tokens, in whatever order the cookie has them.
    assert csrf_for("shk_a", "shk_b") == csrf_for("shk_b", "shk_a") != csrf_for("shk_a")


def _token(n: int) -> str:
    return f"shk_{n:016x}_" + "s" * 43


def test_a_token_adds_its_project_or_takes_its_projects_place() -> None:
    grants = tuple(Grant(Principal(f"{n:016x}", project, TokenRole.VIEWER))
                   for n, project in ((1, "a"), (2, "b")))  # fmt: skip
    session = Session(grants, grants[0], "")
    held = [_token(1), _token(2), _token(9)]  # 9: no longer valid, left out
    added = with_token(session, held, _token(3), Principal(f"{3:016x}", "c", TokenRole.ADMIN))
    assert added == [_token(1), _token(2), _token(3)]
    again = with_token(session, held, _token(4), Principal(f"{4:016x}", "a", TokenRole.ADMIN))
    assert again == [_token(4), _token(2)]  # a's token replaced, in its place
    assert with_token(None, [], _token(1), grants[0].who) == [_token(1)]
    many = tuple(Grant(Principal(f"{n:016x}", f"p{n}", TokenRole.VIEWER))
                 for n in range(MAX_PROJECTS))  # fmt: skip
    full = Session(many, many[0], "")
    with pytest.raises(UsageError, match="the most it may"):
        with_token(full, [_token(n) for n in range(MAX_PROJECTS)], _token(99),
                   Principal(f"{99:016x}", "more", TokenRole.VIEWER))  # fmt: skip
    with pytest.raises(Forbidden, match="holds no token of project 'z'"):
        session.at("z")
    assert session.at("b").who.project == "b" and session.at(None).who.project == "a"
    assert session.at("b").q == "project=b"


def _request(scheme: str) -> Request:
    return Request({"type": "http", "scheme": scheme, "method": "GET", "path": "/ui/",
                    "headers": [], "server": ("127.0.0.1", 8808)})  # fmt: skip


def test_the_cookie_is_secure_over_tls_only() -> None:
    for scheme, secure in (("https", True), ("http", False)):
        response = Response()
        set_cookie(response, _request(scheme), ["shk_x"])
        cookie = response.headers["set-cookie"].lower()
        assert ("; secure" in cookie) == secure
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie


def test_a_target_line_is_drawn_in_the_bars_scale() -> None:
    bars = bar_chart([Bar(300, "a"), Bar(600, "b")], label="rto", unit="s", target=900,
                     target_title="RTO target 15 min")  # fmt: skip
    heights = [float(h) for h in re.findall(r' height="([\d.]+)"><title>', bars)]
    assert heights == [40.0, 80.0]  # scaled to the target, the largest value drawn
    assert '<line class="target" x1="0" y1="13.0"' in bars and "RTO target 15 min" in bars
    assert 'class="target"' not in bar_chart([Bar(1, "a")], label="l", unit="s")


def test_a_drills_phases_carry_their_own_state_and_times() -> None:
    from safehold.web.pages.runs import _phases

    run = SimpleNamespace(phases=[
        {"phase": "restore", "state": "succeeded", "started_at": "2026-12-07T04:00:00+00:00",
         "ended_at": "2026-12-07T04:00:02.500000+00:00"},
        {"phase": "check", "state": "failed", "output": "rows 0",
         "started_at": "2026-12-07T04:00:03+00:00", "ended_at": "2026-12-07T04:00:04+00:00"},
        {"phase": "pre-backup-lock", "exit_code": 3, "duration_s": 0.5, "stderr": "locked"},
    ])  # fmt: skip
    _, rows = _phases(run)  # type: ignore[arg-type]
    assert [(r["name"], r["state"], r["seconds"]) for r in rows] == [
        ("restore", "succeeded", 2.5), ("check", "failed", 1.0), ("pre-backup-lock", "failed", 0.5)
    ]  # fmt: skip
    assert rows[1]["output"] == {"output": "rows 0"} and rows[2]["output"] == {"stderr": "locked"}
