"""The ``workers`` table: a real ``safehold serve`` process writes its row, heart-beats,
and marks its clean stop; ``safehold workers`` tells alive, stopped and lost apart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from tests.servers.private_cluster import database_url, fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]


def safehold(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def test_serve_keeps_its_row_in_workers(private_cluster: Cluster, tmp_path: Path) -> None:
    engine = fresh_database(private_cluster, "workers_serve")
    try:
        check_serve(engine, private_cluster, tmp_path)
    finally:
        engine.dispose()


def check_serve(engine: Engine, private_cluster: Cluster, tmp_path: Path) -> None:
    prepare(engine)
    url = database_url(private_cluster, "workers_serve").render_as_string(hide_password=False)
    url = url.replace("postgresql+psycopg://", "postgresql://")
    config = tmp_path / "safehold.yaml"
    config.write_text("sources: {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    base = ["--config", str(config), "--database", url]

    def workers() -> list[dict[str, Any]]:
        return json.loads(safehold("--json", "workers", *base, env=env).stdout)  # type: ignore[no-any-return]

    # A process killed long ago: its row stays, silent and never stopped.
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO workers (name, host, pid, started_at, heartbeat_at) VALUES "
                "('gone', 'elsewhere', 1, now() - interval '1 day', now() - interval '1 day')"
            )
        )
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "safehold", "serve", *base, "--workers", "1", "--no-api"],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = {row["name"]: row for row in workers()}
            if len(rows) == 2:
                break
            time.sleep(0.5)
        mine = next(row for name, row in rows.items() if name != "gone")
        assert mine["pid"] == proc.pid and mine["alive"] and mine["stopped_at"] is None
        assert rows["gone"]["alive"] is False and rows["gone"]["stopped_at"] is None
        first = mine["heartbeat_at"]
        time.sleep(6)  # more than a heartbeat's period
        again = {row["name"]: row for row in workers()}[mine["name"]]
        assert again["heartbeat_at"] > first and again["alive"]
        text_out = safehold("workers", *base, env=env).stdout
        assert "alive" in text_out and "lost" in text_out
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
    stopped = {row["name"]: row for row in workers()}[mine["name"]]
    assert stopped["stopped_at"] is not None and stopped["alive"] is False
    assert "stopped" in safehold("workers", *base, env=env).stdout
