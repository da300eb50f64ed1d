"""``safehold alerts`` and ``safehold alerts test`` against a real catalog and receivers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from safehold.cli.main import main
from safehold.clock import FakeClock
from safehold.config import load_config
from safehold.service.alerts_run import Alerter
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.plans import plans_from_config, sync_plans
from tests.notify_receivers import HttpReceiver, free_port, http_receiver
from tests.servers.private_cluster import fresh_database

__all__ = ["http_receiver"]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]


@pytest.fixture
def engine(private_cluster: Cluster) -> Iterator[Engine]:
    engine = fresh_database(private_cluster, "alerts_cli")
    prepare(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def write_config(tmp_path: Path, http: HttpReceiver) -> str:
    path = tmp_path / "safehold.yaml"
    path.write_text(
        f"""
alerts:
  receivers:
    ops:
      channels:
        - {{type: webhook, name: hook, url: "{http.base}/hook", secret: "s3cret-hmac-key"}}
        - {{type: apprise, name: down, url: "json://127.0.0.1:{free_port()}/tok3n0123456789"}}
sources:
  db: {{type: directory, paths: [/srv], schedule: "@hourly"}}
"""
    )
    return str(path)


def test_alerts_test_reports_each_channel(
    tmp_path: Path, http_receiver: HttpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, http_receiver)
    code = main(["alerts", "test", "--config", config, "--json"])
    results = json.loads(capsys.readouterr().out)
    assert code == 1  # one channel failed
    assert [(r["channel"], r["ok"]) for r in results] == [("hook", True), ("down", False)]
    assert "tok3n0123456789" not in json.dumps(results)
    (request,) = http_receiver.requests
    assert request.json()["event"] == "test"
    assert main(["alerts", "test", "--config", config, "--receiver", "nobody"]) == 2
    assert "no receiver 'nobody'" in capsys.readouterr().err


def test_alerts_lists_open_and_all(
    engine: Engine, tmp_path: Path, http_receiver: HttpReceiver,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    config_path = write_config(tmp_path, http_receiver)
    config = load_config(config_path)
    ids = sync_plans(engine, plans_from_config(config).values())
    now = datetime.now(UTC)
    run_id = uuid.uuid4()
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO runs (id, plan_id, kind, trigger, state, started_at, ended_at, "
                "error) VALUES (:id, :p, 'backup', 'manual', 'failed', :t, :t, 'disk full')"
            ),
            {"id": run_id, "p": ids["default/db"], "t": now},
        )
    alerter = Alerter(engine, FakeClock(now))
    alerter.configure(config)
    alerter.evaluate_once()
    alerter.deliver_once()
    url = engine.url.render_as_string(hide_password=False)
    args = ["alerts", "--config", config_path, "--database", url]
    assert main([*args, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["kind"], row["plan"], row["run_id"], row["state"]) == (
        "run_failed", "db", str(run_id), "open")  # fmt: skip
    assert (row["sent"], row["pending"]) == (1, 1)  # the webhook went; the other retries
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "run_failed" in out and "default/db" in out and "disk full" in out
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO runs (id, plan_id, kind, trigger, state, started_at, ended_at) "
                "VALUES (:id, :p, 'backup', 'manual', 'succeeded', :t, :t)"
            ),
            {"id": uuid.uuid4(), "p": ids["default/db"], "t": now + timedelta(seconds=1)},
        )
    alerter.clock = FakeClock(now + timedelta(seconds=2))
    alerter.evaluate_once()
    assert main(args) == 0
    assert "no open incidents" in capsys.readouterr().out
    assert main([*args, "--all"]) == 0
    assert "resolved" in capsys.readouterr().out
