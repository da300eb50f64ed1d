"""Alerts from real runs: a worker runs real child backups (one failing in its
pre-backup-lock hook, then one succeeding); the plan's pings are hit at each start and end,
and the failure is told once, by e-mail, with the run's own phase, error and hint."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from procrastinate import App, PsycopgConnector
from sqlalchemy import Engine, text

from safehold.catalog import RunTrigger
from safehold.clock import FakeClock
from safehold.config import load_config
from safehold.service.alerts_run import Alerter
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.jobs import Jobs, register
from safehold.service.plans import plans_from_config, sync_plans
from tests.conftest import PASSWORD
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


@pytest.fixture
def engine_and_conninfo(private_cluster: Cluster) -> Iterator[tuple[Engine, str]]:
    engine = fresh_database(private_cluster, "alerts_runs")
    prepare(engine)
    try:
        yield engine, private_cluster.conninfo("alerts_runs")
    finally:
        engine.dispose()


def test_real_runs_ping_and_alert_once(
    engine_and_conninfo: tuple[Engine, str],
    tmp_path: Path,
    cli_repo: str,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: SmtpServer,
    http_receiver: HttpReceiver,
) -> None:
    engine, conninfo = engine_and_conninfo
    monkeypatch.setenv("SH_TEST_PW", PASSWORD.decode())
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SMTP_PW", SMTP_PASSWORD)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file").write_text("some data\n")
    lock = tmp_path / "lock.sh"
    lock.write_text("#!/bin/sh\n[ -e \"$0.ok\" ] && exit 0\necho 'cannot lock the shop' >&2\n"
                    "exit 3\n")  # fmt: skip
    lock.chmod(0o755)
    hc = f"{http_receiver.base}/hc/5d1c0a2e-7f3b-4c55-9a0e-2b8f7d6e1a90"
    path = tmp_path / "safehold.yaml"
    path.write_text(
        f"""
repository: {{location: {cli_repo}, password_env: SH_TEST_PW}}
alerts:
  receivers:
    ops:
      channels:
        - {{type: email, host: 127.0.0.1, port: {smtp_server.port}, tls: none,
           username: {SMTP_USER}, password: "${{SMTP_PW}}", from: s@example.org,
           to: [ops@example.org]}}
sources:
  job:
    type: directory
    paths: [{tmp_path / "data"}]
    schedule: "@daily"
    hooks: {{pre-backup-lock: {lock}}}
    ping: {{start: "{hc}/start", success: "{hc}", fail: "{hc}/fail"}}
"""
    )
    config = load_config(str(path))
    specs = plans_from_config(config)
    sync_plans(engine, specs.values())
    alerter = Alerter(engine, FakeClock())
    alerter.configure(config)

    async def run_one() -> uuid.UUID:
        app = App(connector=PsycopgConnector(conninfo=conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(app, engine, plans=lambda: specs, state_dir=tmp_path / "st", worker="w")
            jobs.on_run = alerter.ping
            run_id = await asyncio.to_thread(jobs.new_run, "default/job",
                                             trigger=RunTrigger.MANUAL)  # fmt: skip
            await jobs.execute(run_id)
            return run_id

    failed = asyncio.run(run_one())
    alerter.evaluate_once()
    alerter.evaluate_once()  # a second evaluation: nothing more
    alerter.deliver_once()
    prefix = "/hc/5d1c0a2e-7f3b-4c55-9a0e-2b8f7d6e1a90"
    assert http_receiver.paths() == [f"{prefix}/start", f"{prefix}/fail"]
    assert len(smtp_server.mails) == 1
    plain, rich = smtp_server.text_and_html()
    assert str(failed) in plain and str(failed) in rich
    assert "pre-backup-lock" in plain and "default" in plain
    with engine.connect() as db:
        error = db.execute(text("SELECT error FROM runs WHERE id = :r"), {"r": failed}).scalar()
    assert error and "pre-backup-lock" in error
    assert error.splitlines()[0] in plain  # the run's own error: "...status 3: cannot lock..."

    Path(f"{lock}.ok").write_text("")
    asyncio.run(run_one())
    alerter.evaluate_once()
    alerter.deliver_once()
    assert http_receiver.paths()[2:] == [f"{prefix}/start", prefix]
    assert len(smtp_server.mails) == 2
    assert "RESOLVED: backup failed: default/job" in smtp_server.mails[1]["Subject"]
