"""Restore points: recorded by the runs that make them, kept by a hold through the plan's
retention, forgotten when retention (or a hand-made forget, seen by resync) removes them,
listed a page at a time (real repository, real cluster, real child processes)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
from safehold.service.restore_points import list_points
from tests.conftest import PASSWORD, CliRunner
from tests.servers.private_cluster import database_url, fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]


@dataclass
class Service:
    engine: Engine
    conninfo: str
    url: str
    config: Path
    specs: dict[str, PlanSpec]
    tmp: Path

    def run(self, kind: RunKind = RunKind.BACKUP) -> uuid.UUID:
        """One run of the plan (a backup, or its retention) to its end."""

        async def go() -> uuid.UUID:
            app = App(connector=PsycopgConnector(conninfo=self.conninfo))
            register(app)
            async with app.open_async():
                jobs = Jobs(
                    app, self.engine, plans=lambda: self.specs, state_dir=self.tmp / "state",
                    worker="w",
                )  # fmt: skip
                run_id = await asyncio.to_thread(
                    jobs.new_run, "default/db", trigger=RunTrigger.MANUAL, kind=kind
                )
                await jobs.execute(run_id)
                return run_id

        return asyncio.run(go())

    def state(self, run_id: uuid.UUID) -> str:
        with self.engine.connect() as db:
            found: str = db.execute(
                text("SELECT state FROM runs WHERE id = :r"), {"r": run_id}
            ).scalar_one()
        return found


@pytest.fixture
def service(
    private_cluster: Cluster,
    tmp_path: Path,
    cli_repo: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Service]:
    name = "points_" + request.node.name[:40].lower()
    engine = fresh_database(private_cluster, name)
    prepare(engine)
    url = database_url(private_cluster, name).render_as_string(hide_password=False)
    monkeypatch.setenv("SH_TEST_PW", PASSWORD.decode())
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("first\n")
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository: {{location: {cli_repo}, password_env: SH_TEST_PW}}\n"
        f"sources:\n  db: {{type: directory, paths: [{data}], schedule: '@daily', "
        "retention: {keep_last: 1}}\n"
    )
    specs = plans_from_config(load_config(str(config)))
    sync_plans(engine, specs.values())
    try:
        yield Service(
            engine,
            private_cluster.conninfo(name),
            url.replace("postgresql+psycopg://", "postgresql://"),
            config,
            specs,
            tmp_path,
        )
    finally:
        engine.dispose()


def points(cli: CliRunner, service: Service, *args: str) -> dict[str, Any]:
    res = cli(
        "--json", "restore-points", *args, "--config", str(service.config),
        "--database", service.url,
    )  # fmt: skip
    assert res.code == 0, res.output
    found: dict[str, Any] = json.loads(res.stdout)
    return found


def test_a_hold_outlives_retention_until_released(service: Service, cli: CliRunner) -> None:
    first = service.run()
    assert service.state(first) == "succeeded"
    [point] = points(cli, service)["restore_points"]
    assert point["plan"] == "db" and point["run_id"] == str(first)
    assert (point["chain_seq"], point["full"], point["held"]) == (0, point["snapshot_id"], False)
    held = points(cli, service, "hold", point["snapshot_id"][:10], "--reason", "audit")
    assert held["held"] and held["hold_reason"] == "audit" and held["held_by"].startswith("cli:")

    # A second backup, then the plan's retention (keep_last 1): the held point stays.
    (service.tmp / "data" / "f").write_text("second\n")
    second = service.run()
    assert service.state(service.run(RunKind.RETENTION)) == "succeeded"
    listed = points(cli, service)["restore_points"]
    assert [p["snapshot_id"] for p in listed] == [
        p["snapshot_id"] for p in sorted(listed, key=lambda p: p["taken_at"], reverse=True)
    ]
    newest = listed[0]
    assert newest["run_id"] == str(second) and newest["chain_seq"] == 1
    assert newest["full"] == point["snapshot_id"]  # an incremental names its chain's full
    assert [p["snapshot_id"] for p in listed][1] == point["snapshot_id"]
    repo = json.loads(cli("-r", load_repo(service), "snapshots", "--json").stdout)
    assert point["snapshot_id"] in {s["id"] for s in repo}

    # Released, the next retention removes it: the point is forgotten, listed with --all.
    points(cli, service, "release", str(point["id"]))
    assert service.state(service.run(RunKind.RETENTION)) == "succeeded"
    [left] = points(cli, service)["restore_points"]
    assert left["snapshot_id"] == newest["snapshot_id"]
    every = points(cli, service, "--all")["restore_points"]
    gone = [p for p in every if p["snapshot_id"] == point["snapshot_id"]]
    assert gone and gone[0]["forgotten_at"] is not None


def load_repo(service: Service) -> str:
    config = load_config(str(service.config))
    assert config.repository is not None
    return config.repository.location


def test_pages_follow_the_cursor_and_a_bad_cursor_is_refused(
    service: Service, cli: CliRunner
) -> None:
    with service.engine.begin() as db:
        plan_id = db.execute(text("SELECT id FROM plans WHERE name = 'db'")).scalar_one()
        db.execute(
            text(
                "INSERT INTO restore_points (plan_id, project, snapshot_id, taken_at) "
                "SELECT :p, 'default', md5(i::text) || md5(i::text), "
                "  timestamptz '2026-01-01' + (i / 2) * interval '1 hour' "
                "FROM generate_series(1, 25) i"
            ),
            {"p": plan_id},
        )
    seen: list[str] = []
    cursor = None
    while True:
        page = list_points(service.engine, plan="db", limit=4, cursor=cursor)
        seen += [p["snapshot_id"] for p in page.points]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    # Every point once, newest first, even where two share their time.
    assert len(seen) == len(set(seen)) == 25
    ordered = list_points(service.engine, plan="db", limit=500).points
    assert seen == [p["snapshot_id"] for p in ordered]
    assert list_points(service.engine, projects=["other"], limit=5).points == []

    res = cli(
        "restore-points", "--cursor", "not-a-cursor", "--config", str(service.config),
        "--database", service.url,
    )  # fmt: skip
    assert res.code == 2 and "cursor" in res.stderr


def test_resync_completes_points_and_notes_the_ones_removed_by_hand(
    service: Service, cli: CliRunner
) -> None:
    state = {"SAFEHOLD_STATE_DIR": str(service.tmp / "state"), "SH_TEST_PW": PASSWORD.decode()}
    backup = cli("--json", "backup", "--config", str(service.config), "--source", "db", env=state)
    assert backup.code == 0, backup.output
    made = json.loads(backup.stdout)
    assert points(cli, service)["restore_points"] == []  # made by hand: not known yet
    service_args = ["--config", str(service.config), "--database", service.url]
    assert cli("catalog", "resync", *service_args, env=state).code == 0
    [point] = points(cli, service)["restore_points"]
    assert (point["snapshot_id"], point["chain_seq"]) == (made["snapshot"], 0)
    assert cli("forget", "--config", str(service.config), made["snapshot"], env=state).code == 0
    assert cli("catalog", "resync", *service_args, env=state).code == 0
    assert points(cli, service)["restore_points"] == []
    [gone] = points(cli, service, "--all")["restore_points"]
    assert gone["forgotten_at"] is not None


def test_a_restore_job_brings_a_point_back_into_a_new_target(
    service: Service, cli: CliRunner
) -> None:
    """restore-points restore queues a restore run; a worker runs it through the source's
    restore path; --wait follows it to its end and says how it went."""
    service.run()
    [point] = points(cli, service)["restore_points"]
    target = service.tmp / "restored"
    queued = points(cli, service, "restore", point["snapshot_id"][:12], "--target", str(target))
    assert (queued["state"], queued["snapshot"]) == ("queued", point["snapshot_id"])
    run_id = uuid.UUID(queued["run_id"])

    async def work(wanted: uuid.UUID | None = None) -> None:
        app = App(connector=PsycopgConnector(conninfo=service.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(
                app, service.engine, plans=lambda: service.specs, state_dir=service.tmp / "s",
                worker="w",
            )  # fmt: skip
            run = wanted
            while run is None:  # the run --wait is about to queue
                with service.engine.connect() as db:
                    run = db.execute(
                        text("SELECT id FROM runs WHERE kind = 'restore' AND state = 'queued'")
                    ).scalar()
                await asyncio.sleep(0.1)
            await jobs.execute(run)

    asyncio.run(work(run_id))
    assert service.state(run_id) == "succeeded"
    restored = target / str(service.tmp / "data").lstrip("/") / "f"
    assert restored.read_text() == "first\n"
    res = cli(
        "--json", "jobs", "--kind", "restore", "--config", str(service.config),
        "--database", service.url,
    )  # fmt: skip
    [listed] = json.loads(res.stdout)
    assert (listed["id"], listed["kind"], listed["snapshot_id"]) == (
        str(run_id),
        "restore",
        point["snapshot_id"],
    )

    # --wait, into a target that now holds data and without --replace: the job fails,
    # the command says why and exits 1.
    import threading

    worker = threading.Thread(target=lambda: asyncio.run(work()))
    worker.start()
    res = cli(
        "restore-points", "restore", str(point["id"]), "--target", str(target), "--wait",
        "--config", str(service.config), "--database", service.url,
    )  # fmt: skip
    worker.join(timeout=120)
    assert res.code == 1, res.output
    assert "failed" in res.stdout and "already holds files" in res.stdout, res.stdout


def test_delete_forgets_a_point_unless_it_is_held(service: Service, cli: CliRunner) -> None:
    service.run()
    [point] = points(cli, service)["restore_points"]
    points(cli, service, "hold", str(point["id"]))
    refused = cli("restore-points", "delete", str(point["id"]), "--config", str(service.config),
                  "--database", service.url)  # fmt: skip
    assert refused.code == 2 and "is held" in refused.stderr and "release" in refused.stderr
    points(cli, service, "release", str(point["id"]))
    queued = points(cli, service, "delete", str(point["id"]))
    run_id = uuid.UUID(queued["run_id"])

    async def work() -> None:
        app = App(connector=PsycopgConnector(conninfo=service.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(app, service.engine, plans=lambda: service.specs,
                        state_dir=service.tmp / "s", worker="w")  # fmt: skip
            await jobs.execute(run_id)

    asyncio.run(work())
    assert service.state(run_id) == "succeeded"
    assert points(cli, service)["restore_points"] == []
    [gone] = points(cli, service, "--all")["restore_points"]
    assert gone["forgotten_at"] is not None
    repo = json.loads(cli("-r", load_repo(service), "snapshots", "--json").stdout)
    assert repo == []
