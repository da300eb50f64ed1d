"""The operators' commands for destinations and API plans, and ``safehold serve`` running
an API plan whose destination's password exists only sealed in the catalog."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from tests.conftest import PASSWORD, CliResult, CliRunner
from tests.servers.private_cluster import database_url, fresh_database
from tests.service.test_destinations import catalog_text

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]


@dataclass
class Setup:
    engine: Engine
    url: str
    config: Path
    tmp: Path
    repo: str
    cli: CliRunner

    def run(self, *args: str, stdin: str | None = None, config: Path | None = None) -> CliResult:
        return self.cli(
            "--json", *args, "--config", str(config or self.config), "--database", self.url,
            "--state-dir", str(self.tmp / "state"),
            input=stdin.encode() if stdin is not None else None,
        )  # fmt: skip


@pytest.fixture
def setup(
    private_cluster: Cluster,
    tmp_path: Path,
    cli_repo: str,
    cli: CliRunner,
    request: pytest.FixtureRequest,
) -> Iterator[Setup]:
    name = "apicli_" + request.node.name[:40].lower()
    engine = fresh_database(private_cluster, name)
    prepare(engine)
    url = database_url(private_cluster, name).render_as_string(hide_password=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("first\n")
    config = tmp_path / "safehold.yaml"
    config.write_text(f"service: {{key_file: {tmp_path / 'keys' / 'service.key'}}}\n")
    try:
        yield Setup(
            engine, url.replace("postgresql+psycopg://", "postgresql://"), config, tmp_path,
            cli_repo, cli,
        )  # fmt: skip
    finally:
        engine.dispose()


def add_main(setup: Setup) -> None:
    made = setup.run(
        "destinations", "add", "main", "--project", "p1", "--from-file", "-",
        stdin=f"location: {setup.repo}\npassword: {PASSWORD.decode()}\n",
    )  # fmt: skip
    assert made.code == 0, made.output
    assert PASSWORD.decode() not in made.output
    assert json.loads(made.stdout)["location"] == setup.repo


def test_destinations_from_the_command_line(setup: Setup) -> None:
    add_main(setup)
    listed = setup.run("destinations", "list", "--project", "p1")
    assert [d["name"] for d in json.loads(listed.stdout)] == ["main"]
    assert json.loads(setup.run("destinations", "list", "--project", "p2").stdout) == []
    shown = setup.run("destinations", "show", "main", "--project", "p1")
    assert shown.code == 0 and PASSWORD.decode() not in shown.output
    assert (setup.tmp / "keys" / "service.key").stat().st_mode & 0o077 == 0
    bad = setup.run(
        "destinations", "add", "other", "--project", "p1", "--from-file", "-",
        stdin="password: x\n",
    )  # fmt: skip
    assert bad.code == 2 and "destination p1/other: location: field required" in bad.stderr
    # Another machine, not given the key file: told what to do, not an opaque error.
    elsewhere = setup.tmp / "elsewhere.yaml"
    elsewhere.write_text(f"service: {{key_file: {setup.tmp / 'other.key'}}}\n")
    wrong = setup.run(
        "destinations", "update", "main", "--project", "p1", "--from-file", "-",
        stdin="max_concurrent_jobs: 2\n", config=elsewhere,
    )  # fmt: skip
    assert wrong.code == 2, wrong.output
    assert "not the key this catalog's secrets were sealed with" in wrong.stderr
    assert "copy the key file" in wrong.stderr and "InvalidTag" not in wrong.stderr
    removed = setup.run("destinations", "remove", "main", "--project", "p1")
    assert removed.code == 0, removed.output


def test_serve_runs_an_api_plan_made_from_the_command_line(setup: Setup) -> None:
    add_main(setup)
    plan = setup.tmp / "plan.yaml"
    plan.write_text(
        f"type: directory\npaths: [{setup.tmp / 'data'}]\nschedule: '@every 2s'\n"
        "on_overlap: skip\nrepository: main\n"
    )
    made = setup.run("plans", "create", "job", "--project", "p1", "--from-file", str(plan))
    assert made.code == 0, made.output
    assert json.loads(made.stdout)["origin"] == "api"
    invalid = setup.tmp / "invalid.yaml"
    invalid.write_text("type: directory\nschedule: '@daily'\nrepository: main\n")
    bad = setup.run("plans", "update", "job", "--project", "p1", "--from-file", str(invalid))
    assert bad.code == 2 and "sources.job.paths: field required" in bad.stderr

    env = {k: v for k, v in _cli_env(setup).items() if k != "SAFEHOLD_PASSWORD"}
    log = setup.tmp / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "safehold", "--log-format", "json", "serve",
             "--config", str(setup.config), "--database", setup.url,
             "--state-dir", str(setup.tmp / "state"), "--tick", "0.5", "--workers", "1"],
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        snapshot = _wait_for_success(setup.engine, "job", log)
        # A restore job of the plan's point, run by serve's worker with the sealed password.
        paused = setup.run("plan", "pause", "p1/job")
        assert paused.code == 0 and json.loads(paused.stdout)["paused"] is True, paused.output
        target = setup.tmp / "restored"
        restored = setup.run("restore-points", "restore", snapshot[:12], "--target",
                             str(target), "--wait")  # fmt: skip
        assert restored.code == 0, restored.output + log.read_text()[-3000:]
        assert (target / str(setup.tmp / "data").lstrip("/") / "f").read_text() == "first\n"
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=90)
    snaps = setup.cli("-r", setup.repo, "snapshots", "--json")
    assert snapshot in snaps.stdout
    generated = (setup.tmp / "state" / "plans" / "p1" / "job.yaml").read_text()
    assert PASSWORD.decode() not in generated
    assert PASSWORD.decode() not in log.read_text()
    assert PASSWORD.decode() not in catalog_text(setup.engine)
    listed = setup.run("plans")
    assert listed.code == 0 and "p1/job" in listed.stdout, listed.output
    queued = setup.run("plan", "run", "p1/job")
    assert queued.code == 0 and json.loads(queued.stdout)["state"] == "queued", queued.output
    deleted = setup.run("plans", "delete", "job", "--project", "p1")
    assert deleted.code == 0, deleted.output
    assert setup.run("plans", "show", "job", "--project", "p1").code == 2


def _cli_env(setup: Setup) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env["SAFEHOLD_CACHE_DIR"] = str(setup.tmp / "cache")
    env["HOME"] = str(setup.tmp / "home")
    return env


def _wait_for_success(engine: Engine, plan: str, log: Path) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with engine.connect() as db:
            found = db.execute(
                text(
                    "SELECT r.snapshot_id FROM runs r JOIN plans p ON p.id = r.plan_id "
                    "WHERE p.name = :n AND r.state = 'succeeded' AND r.kind = 'backup'"
                ),
                {"n": plan},
            ).first()
        if found is not None:
            return str(found[0])
        time.sleep(0.5)
    raise AssertionError("no successful run of the API plan:\n" + log.read_text()[-4000:])
