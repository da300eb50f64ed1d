"""A drill plan's runs on a worker: real children, a real catalog; the worker chooses
each drill's point from the plan's restore points and records the child's outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procrastinate import App, PsycopgConnector
from sqlalchemy import Engine, text

from safehold.catalog import RunKind, RunTrigger
from safehold.config import load_config
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.jobs import Jobs, register
from safehold.service.plans import PlanSpec, plans_from_config, sync_plans
from tests.conftest import PASSWORD
from tests.servers.private_cluster import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]


@pytest.fixture
def engine(
    private_cluster: Cluster, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[tuple[Engine, str]]:  # fmt: skip
    name = "drilljobs_" + request.node.name[:30].lower()
    found = fresh_database(private_cluster, name)
    prepare(found)
    monkeypatch.setenv("SH_TEST_PW", PASSWORD.decode())
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", str(tmp_path / "cache"))
    try:
        yield found, private_cluster.conninfo(name)
    finally:
        found.dispose()


def run(
    engine: Engine, conninfo: str, specs: dict[str, PlanSpec], plan: str, kind: RunKind,
    state_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    async def go() -> uuid.UUID:
        app = App(connector=PsycopgConnector(conninfo=conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(app, engine, plans=lambda: specs, state_dir=state_dir, worker="w1")
            run_id = await asyncio.to_thread(
                jobs.new_run, plan, trigger=RunTrigger.SCHEDULE, kind=kind
            )
            await jobs.execute(run_id)
            return run_id

    run_id = asyncio.run(go())
    with engine.connect() as db:
        found = db.execute(text("SELECT * FROM runs WHERE id = :r"), {"r": run_id}).one()
        drill = db.execute(
            text("SELECT * FROM drills WHERE run_id = :r"), {"r": run_id}
        ).one_or_none()
    out = dict(found._mapping)
    out["drill"] = None if drill is None else dict(drill._mapping)
    return out


def test_drill_runs_rotate_over_restore_points_and_a_failed_check_is_recorded(
    engine: tuple[Engine, str], tmp_path: Path, cli_repo: str
) -> None:
    db_engine, conninfo = engine
    db = sqlite3.connect(tmp_path / "app.db")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    check = tmp_path / "check.sh"
    check.write_text('#!/bin/sh\ntest -f "$SAFEHOLD_DRILL_PATH" && echo "found it"\n')
    check.chmod(0o755)
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository: {{location: {cli_repo}, password_env: SH_TEST_PW}}\nsources:\n"
        f"  app:\n    type: sqlite\n    path: {tmp_path / 'app.db'}\n"
        '    schedule: "@daily"\n    chain_length: 0\n'
        '    drill: {schedule: "@weekly", target: rotating, rto_target: 1h, '
        f"check: {{command: {check}}}}}\n"
    )
    specs = plans_from_config(load_config(str(config)))
    assert set(specs) == {"default/app", "default/app.drill"}
    sync_plans(db_engine, specs.values())
    state = tmp_path / "state"
    taken = []
    for i in range(3):
        db.execute("INSERT INTO t VALUES (?)", (i,))
        db.commit()
        backup = run(db_engine, conninfo, specs, "default/app", RunKind.BACKUP, state)
        assert backup["state"] == "succeeded", backup["error"]
        taken.append(backup["snapshot_id"])
    db.close()

    proven = []
    for _ in range(4):
        drill = run(db_engine, conninfo, specs, "default/app.drill", RunKind.DRILL, state)
        assert drill["state"] == "succeeded", drill["error"]
        row = drill["drill"]
        assert row is not None and row["result"] == "passed" and row["plan"] == "app"
        assert row["check_output"] == "found it" and row["rto_target_seconds"] == 3600
        assert row["snapshot_id"] == drill["snapshot_id"] and row["restore_seconds"] > 0
        proven.append(row["snapshot_id"])
    # chain_length 0: each backup is a chain of its own; rotating walks back through them.
    assert proven == [taken[2], taken[1], taken[0], taken[2]]

    check.write_text("#!/bin/sh\necho 'orders table is empty'\nexit 3\n")
    failed = run(db_engine, conninfo, specs, "default/app.drill", RunKind.DRILL, state)
    assert failed["state"] == "failed" and "check failed" in failed["error"]
    row = failed["drill"]
    assert row["result"] == "failed" and row["failed_phase"] == "check"
    assert "orders table is empty" in row["check_output"] and "exited 3" in row["check_output"]
    assert [p["phase"] for p in failed["phases"]] == ["sandbox", "restore", "check"]
    assert failed["phases"][-1]["state"] == "failed"
