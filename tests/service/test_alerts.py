"""The alert engine on a real catalog, delivering to real receivers on 127.0.0.1: one
message per incident, none while it stays open, a resolved message when it clears."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from safehold.clock import FakeClock
from safehold.config import Config, parse_config
from safehold.notify import sign
from safehold.service.alerts_run import Alerter
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.plans import plans_from_config, sync_plans
from safehold.service.tick import TickState, tick
from tests.notify_receivers import (
    SMTP_PASSWORD,
    SMTP_USER,
    HttpReceiver,
    SmtpServer,
    http_receiver,
    smtp_server,
)
from tests.servers.private_cluster import fresh_database

__all__ = ["http_receiver", "smtp_server"]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]

T0 = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)
SECRET = "whsec-alerts-tests-4711"


@pytest.fixture
def engine(private_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Engine]:
    engine = fresh_database(private_cluster, "alerts_" + request.node.name[:40].lower())
    prepare(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def make_config(smtp: SmtpServer, http: HttpReceiver, *, extra: str = "",
                webhook_path: str = "/hook") -> Config:  # fmt: skip
    return parse_config(
        f"""
alerts:
  max_attempts: 3
  retry_delay: 30s
  receivers:
    ops:
      projects: [shop]
      channels:
        - type: email
          host: 127.0.0.1
          port: {smtp.port}
          tls: none
          username: {SMTP_USER}
          password: ${{SMTP_PASSWORD}}
          from: safehold@example.org
          to: [ops@example.org]
        - type: webhook
          name: hook
          url: {http.base}{webhook_path}
          secret: ${{HOOK_SECRET}}
        - type: apprise
          url: json://127.0.0.1:{http.port}/apprise
    others:
      projects: [elsewhere]
      channels:
        - {{type: webhook, url: "{http.base}/others"}}
sources:
  db:
    type: directory
    paths: [/srv/db]
    project: shop
    schedule: "0 * * * *"
    start_window: 10m
    ping:
      start: {http.base}/ping/db-0123456789/start
      success: {http.base}/ping/db-0123456789
      fail: {http.base}/ping/db-0123456789/fail
{extra}
""",
        path="<alerts test>",
        env={"SMTP_PASSWORD": SMTP_PASSWORD, "HOOK_SECRET": SECRET},
    )


def setup(engine: Engine, config: Config, clock: FakeClock) -> tuple[Alerter, dict[str, int]]:
    specs = plans_from_config(config)
    ids = sync_plans(engine, specs.values())
    with engine.begin() as db:
        db.execute(text("UPDATE plans SET created_at = :t"), {"t": T0})
    alerter = Alerter(engine, clock)
    alerter.configure(config)
    return alerter, ids


def add_run(engine: Engine, plan_id: int, state: str, at: datetime, **kw: Any) -> str:
    run_id = uuid.uuid4()
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO runs (id, plan_id, kind, trigger, state, queued_at, started_at, "
                "ended_at, error, hint, phases) VALUES (:id, :p, 'backup', 'schedule', :s, :t, "
                ":t, :t, :e, :h, CAST(:ph AS jsonb))"
            ),
            {
                "id": run_id,
                "p": plan_id,
                "s": state,
                "t": at,
                "e": kw.get("error"),
                "h": kw.get("hint"),
                "ph": kw.get("phases", "[]"),
            },
        )
    return str(run_id)


def webhooks(http: HttpReceiver, path: str = "/hook") -> list[dict[str, Any]]:
    found = []
    for r in http.requests:
        if r.path == path:
            stamp = r.headers["X-Safehold-Timestamp"]
            assert r.headers["X-Safehold-Signature"] == sign(SECRET, stamp, r.body)
            found.append(r.json())
    return found


def test_a_failed_run_alerts_once_then_resolves(
    engine: Engine, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:
    clock = FakeClock(T0 + timedelta(hours=1))
    alerter, ids = setup(engine, make_config(smtp_server, http_receiver), clock)
    phases = '[{"phase": "pre-backup-lock", "exit_code": 3, "timed_out": false}]'
    run_id = add_run(engine, ids["shop/db"], "failed", T0 + timedelta(minutes=5),
                     error="pg_dump: connection refused", phases=phases)  # fmt: skip

    opened = alerter.evaluate_once()
    assert [f.kind for f in opened.opened] == ["run_failed"]
    sent = alerter.deliver_once()
    assert len(sent.sent) == 3 and not sent.retrying  # e-mail, webhook, Apprise: ops only

    # The e-mail names the project, plan, run id, phase, error and the next step.
    assert len(smtp_server.mails) == 1
    plain, rich = smtp_server.text_and_html()
    assert "ALERT: backup failed: shop/db" in smtp_server.mails[0]["Subject"]
    for part in (plain, rich):
        assert "shop" in part and run_id in part and "pre-backup-lock" in part
        assert "pg_dump: connection refused" in part
        assert f"safehold runs show {run_id[:8]}" in part
    assert "<td class='run-id' style='white-space:pre-wrap'>" + run_id + "</td>" in rich
    (hook,) = webhooks(http_receiver)
    assert (hook["event"], hook["kind"], hook["project"], hook["plan"], hook["run_id"]) == (
        "opened", "run_failed", "shop", "db", run_id)  # fmt: skip
    assert hook["phase"] == "pre-backup-lock" and hook["hint"]
    assert [r.json()["title"] for r in http_receiver.requests if r.path == "/apprise"] == [
        "[safehold] ALERT: backup failed: shop/db"
    ]
    assert webhooks(http_receiver, "/others") == []  # another project's receiver

    # Still failed (a second failure, even): nothing new is sent.
    add_run(engine, ids["shop/db"], "failed", T0 + timedelta(minutes=30), error="again")
    clock.advance(600)
    again = alerter.evaluate_once()
    assert again.opened == [] and again.resolved == []
    assert alerter.deliver_once().sent == []
    assert len(smtp_server.mails) == 1 and len(webhooks(http_receiver)) == 1

    # A later success clears it: one resolved message per channel.
    add_run(engine, ids["shop/db"], "succeeded", T0 + timedelta(minutes=50))
    clock.advance(600)
    cleared = alerter.evaluate_once()
    assert len(cleared.resolved) == 1
    assert len(alerter.deliver_once().sent) == 3
    assert "RESOLVED: backup failed: shop/db" in smtp_server.mails[-1]["Subject"]
    assert [h["event"] for h in webhooks(http_receiver)] == ["opened", "resolved"]
    assert alerter.evaluate_once().opened == []
    with engine.connect() as db:
        states = db.execute(text("SELECT state, open_key FROM incidents")).all()
    assert [tuple(s) for s in states] == [("resolved", None)]


def test_a_stopped_scheduler_alerts_missed_slots_then_resolves(
    engine: Engine, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:
    config = make_config(smtp_server, http_receiver)
    clock = FakeClock(T0)
    alerter, ids = setup(engine, config, clock)
    specs = plans_from_config(config)
    # The scheduler was stopped from 20:00 to 01:30: the tick then finds four slots
    # missed (outside their 10 min window) and queues one catch-up run.
    clock.advance(timedelta(hours=5, minutes=30))
    result = tick(engine, specs, ids, clock.now(), TickState())
    assert len(result.new_runs) == 1
    found = alerter.evaluate_once()
    assert [f.kind for f in found.opened] == ["missed_slot"]
    assert "4 slot(s) missed" in (found.opened[0].error or "")
    alerter.deliver_once()
    (hook,) = webhooks(http_receiver)
    assert hook["kind"] == "missed_slot" and hook["plan"] == "db"
    assert "safehold serve" in hook["hint"]
    # The catch-up is still queued, then it runs: nothing new until a slot succeeds.
    clock.advance(60)
    assert alerter.evaluate_once().opened == []
    with engine.begin() as db:
        db.execute(
            text("UPDATE slots SET state = 'succeeded', ended_at = :t WHERE state = 'queued'"),
            {"t": clock.now()},
        )
    clock.advance(60)
    assert len(alerter.evaluate_once().resolved) == 1
    alerter.deliver_once()
    assert [h["event"] for h in webhooks(http_receiver)] == ["opened", "resolved"]
    assert len(smtp_server.mails) == 2


def test_rpo_breach_and_a_failed_copy(
    engine: Engine, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:
    config = make_config(smtp_server, http_receiver)
    config.sources["db"] = config.sources["db"].__class__(
        name="db", kind="directory", settings=config.sources["db"].settings,
        common=config.sources["db"].common.model_copy(update={"rpo_target": 7200.0}),
    )  # fmt: skip
    clock = FakeClock(T0 + timedelta(hours=1))
    alerter, ids = setup(engine, config, clock)
    assert alerter.evaluate_once().opened == []  # an hour old plan, no point yet: within
    run_id = add_run(engine, ids["shop/db"], "succeeded", T0 + timedelta(minutes=70),
                     error="copy to s3:https://h/b failed: 403 Forbidden")  # fmt: skip
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO restore_points (plan_id, project, snapshot_id, run_id, taken_at) "
                "VALUES (:p, 'shop', :s, :r, :t)"
            ),
            {"p": ids["shop/db"], "s": "a" * 64, "r": run_id, "t": T0 + timedelta(minutes=70)},
        )
    found = alerter.evaluate_once()
    assert [(f.kind, f.subject) for f in found.opened] == [("copy_failed", "s3:https://h/b")]
    clock.advance(timedelta(hours=3))  # the newest point is now 2h50m old
    found = alerter.evaluate_once()
    assert [f.kind for f in found.opened] == ["rpo_breach"]
    assert "over the RPO target of 2 h" in (found.opened[0].error or "")
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO restore_points (plan_id, project, snapshot_id, taken_at) "
                "VALUES (:p, 'shop', :s, :t)"
            ),
            {"p": ids["shop/db"], "s": "b" * 64, "t": clock.now()},
        )
    add_run(engine, ids["shop/db"], "succeeded", clock.now())
    assert len(alerter.evaluate_once().resolved) == 2


def test_a_failing_channel_is_retried_and_its_failure_recorded(
    engine: Engine, smtp_server: SmtpServer, http_receiver: HttpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    config = make_config(smtp_server, http_receiver, webhook_path="/down/t0ken1234567890")
    clock = FakeClock(T0 + timedelta(hours=1))
    alerter, ids = setup(engine, config, clock)
    http_receiver.statuses = [500] * 100  # the webhook (and Apprise's json://) are down
    add_run(engine, ids["shop/db"], "failed", T0 + timedelta(minutes=5), error="boom")
    alerter.evaluate_once()
    first = alerter.deliver_once()
    assert len(first.sent) == 1 and len(first.retrying) == 2  # e-mail went
    tries = len(http_receiver.requests)
    assert alerter.deliver_once().retrying == []  # not due yet: back-off
    assert len(http_receiver.requests) == tries
    clock.advance(30)
    assert len(alerter.deliver_once().retrying) == 2  # attempt 2, next in 60 s
    clock.advance(60)
    with caplog.at_level(logging.ERROR, logger="safehold.service.alerts"):
        last = alerter.deliver_once()
    assert len(last.failed) == 2  # max_attempts: 3
    assert "failed for good after 3 attempts" in caplog.text
    with engine.connect() as db:
        rows = db.execute(
            text(
                "SELECT channel, state, attempts, last_error FROM alert_deliveries "
                "WHERE state = 'failed' ORDER BY channel"
            )
        ).all()
    assert [(r.channel, r.attempts) for r in rows] == [("apprise-3", 3), ("hook", 3)]
    assert "HTTP 500" in rows[1].last_error
    assert "t0ken1234567890" not in rows[1].last_error and SECRET not in caplog.text
    from safehold.service.alerts import incidents_list

    (incident,) = incidents_list(engine)
    assert (incident["sent"], incident["failed"]) == (1, 2)


def test_pings_at_a_runs_start_and_end(
    engine: Engine, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:
    clock = FakeClock(T0)
    alerter, _ = setup(engine, make_config(smtp_server, http_receiver), clock)

    async def run() -> None:
        await alerter.ping("shop/db", "start", "r1")
        await alerter.ping("shop/db", "fail", "r1")
        await alerter.ping("shop/other", "start", "r2")  # no ping: block, nothing queued

    asyncio.run(run())
    assert len(alerter.deliver_once().sent) == 2
    assert http_receiver.paths() == ["/ping/db-0123456789/start", "/ping/db-0123456789/fail"]
    clock.advance(timedelta(days=3))  # sent pings are pruned after two days
    alerter.evaluate_once()
    with engine.connect() as db:
        assert db.execute(text("SELECT count(*) FROM alert_deliveries")).scalar() == 0


def test_lost_agents_drills_and_damage_found(
    engine: Engine, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:
    """The conditions on tables other features fill: agents, drills and verify runs."""
    clock = FakeClock(T0 + timedelta(hours=1))
    alerter, ids = setup(engine, make_config(smtp_server, http_receiver), clock)
    assert alerter.evaluate_once().opened == []  # no drill, no verify run: quiet
    with engine.begin() as db:
        db.execute(text("INSERT INTO projects (name) VALUES ('shop')"))
        db.execute(
            text(
                "INSERT INTO agents (project, name, host, heartbeat_at) "
                "VALUES ('shop', 'db-host', 'db1', :t)"
            ),
            {"t": T0},
        )
        db.execute(
            text(
                "INSERT INTO drills (project, plan, snapshot_id, started_at, result, "
                "failed_phase, error) VALUES ('shop', 'db', :s, :t, 'failed', 'check', "
                "'row count 0, expected > 0')"
            ),
            {"s": "c" * 64, "t": T0},
        )
        db.execute(
            text(
                "INSERT INTO drills (project, plan, started_at, result, restore_seconds, "
                "rto_target_seconds) VALUES ('shop', 'web', :t, 'passed', 1300, 900)"
            ),
            {"t": T0},
        )
        db.execute(
            text(
                "INSERT INTO runs (id, plan_id, kind, trigger, state, ended_at, error, params) "
                "VALUES (gen_random_uuid(), :p, 'verify', 'schedule', 'failed', :t, "
                "'pack 3f2a damaged', CAST(:params AS jsonb))"
            ),
            {"p": ids["shop/db"], "t": T0, "params": '{"snapshots": ["%s"]}' % ("d" * 64)},
        )
    add_run(engine, ids["shop/db"], "worker_lost", T0 + timedelta(minutes=1),
            error="agent lost: the agent running it stopped heart-beating")  # fmt: skip
    with engine.begin() as db:
        db.execute(text("UPDATE runs SET worker = 'agent:shop/db-host' WHERE kind = 'backup'"))
    found = {(f.kind, f.plan, f.subject): f for f in alerter.evaluate_once().opened}
    assert set(found) == {
        ("agent_lost", "", "db-host"),
        ("agent_lost", "db", "db-host"),
        ("drill_failed", "db", ""),
        ("rto_over_target", "web", ""),
        ("verify_damage", "db", ""),
    }
    assert found[("drill_failed", "db", "")].phase == "check"
    slow = found[("rto_over_target", "web", "")].error or ""
    assert "21 min 40 s, over the RTO target of 15 min" in slow
    assert "dddddddd" in (found[("verify_damage", "db", "")].error or "")
    # The agent is back: its heartbeat incident clears; its plan's clears at a success.
    with engine.begin() as db:
        db.execute(text("UPDATE agents SET heartbeat_at = :t"), {"t": clock.now()})
    resolved = alerter.evaluate_once().resolved
    assert len(resolved) == 1


def test_one_process_evaluates_at_a_time(
    engine: Engine, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:
    from safehold.service.alerts import ALERT_LOCK

    clock = FakeClock(T0 + timedelta(hours=1))
    alerter, ids = setup(engine, make_config(smtp_server, http_receiver), clock)
    add_run(engine, ids["shop/db"], "failed", T0 + timedelta(minutes=5), error="boom")
    with engine.begin() as other:  # another service is evaluating
        other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ALERT_LOCK})
        skipped = alerter.evaluate_once()
        assert not skipped.evaluated and skipped.opened == []
    assert [f.kind for f in alerter.evaluate_once().opened] == ["run_failed"]
