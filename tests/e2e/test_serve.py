"""``safehold serve`` as operators run it: real processes, its own private PostgreSQL,
a real PostgreSQL database backed up to SeaweedFS, and the ledger's states checked."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.e2e.serving import Service, service_in
from tests.e2e.waiting import wait_for
from tests.servers.postgres import PG_PASSWORD, PG_USER_PW, PgServer
from tests.servers.s3 import SeaweedS3, unique_bucket

pytestmark = pytest.mark.slow


@pytest.fixture
def service(
    make_state_dir: Callable[[], Path], tmp_path: Path, s3_server: SeaweedS3
) -> Iterator[Service]:
    with service_in(tmp_path, make_state_dir(), **s3_server.env()) as svc:
        yield svc


def test_serve_runs_plans_on_their_schedules(
    service: Service, pg_server: PgServer, s3_server: SeaweedS3, tmp_path: Path
) -> None:
    db = f"serve_{os.getpid()}"
    pg_server.psql(f"DROP DATABASE IF EXISTS {db}")
    pg_server.psql(f"CREATE DATABASE {db}")
    pg_server.psql("CREATE TABLE t AS SELECT generate_series(1, 500) AS n", db=db)
    repo = f"s3:{s3_server.endpoint}/{unique_bucket('serve')}/repo"
    init = subprocess.run(
        [sys.executable, "-m", "safehold", "-r", repo, "init", "--kdf-log2n", "10"],
        env={**service.env, "SAFEHOLD_PASSWORD": PASSWORD.decode()},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nsleep 60\n")
    hang.chmod(0o755)
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nsleep 4\n")
    slow.chmod(0o755)
    (tmp_path / "files").mkdir()
    config = f"""\
repository: {{location: "{repo}", password_env: REPO_PW}}
sources:
  shop-db:
    type: postgres
    url: postgresql://{PG_USER_PW}@127.0.0.1:{pg_server.port}/{db}
    password: {PG_PASSWORD}
    schedule: "*/3 * * * * *"
    retention: {{keep_last: 2}}
  hangs:
    type: directory
    paths: [{tmp_path / "files"}]
    schedule: "*/5 * * * * *"
    timeout: 2s
    hooks: {{pre-backup-lock: {hang}}}
  overlaps:
    type: directory
    paths: [{tmp_path / "files"}]
    schedule: "* * * * * *"
    exit_if_in_progress: true
    hooks: {{backup: {slow}}}
  spaced:
    type: directory
    paths: [{tmp_path / "files"}]
    schedule: "* * * * * *"
    min_interval: 4s
  rare:
    type: directory
    paths: [{tmp_path / "files"}]
    schedule: "@yearly"
"""
    service.config.write_text(config)
    service.start()

    def ran(plan: str, state: str, count: int = 1) -> Callable[[], bool]:
        return lambda: service.count(plan, state) >= count

    wait_for("two backups of shop-db", ran("default/shop-db", "succeeded", 2))
    wait_for("a timed-out run of hangs", ran("default/hangs", "timed_out"))
    wait_for("a succeeded run of overlaps", ran("default/overlaps", "succeeded"))
    wait_for("three backups of spaced", ran("default/spaced", "succeeded", 3))
    # The ledger says why slots did not run: overlap (exit_if_in_progress), min_interval,
    # and the run past its time-out.
    reasons = [r or "" for _, r in service.ledger("overlaps")]
    assert any(r.startswith("overlap: the previous run is still going") for r in reasons)
    assert any((r or "").startswith("min_interval: ") for _, r in service.ledger("spaced"))
    assert ("timed_out", "the run's time-out") in service.ledger("hangs")
    starts = service.starts("spaced")
    assert all(b - a >= 4 for a, b in itertools.pairwise(starts)), starts
    # Their part is shown: paused, their every-second runs stop taking the machine's CPU
    # from what follows (each run is a child process).
    for busy in ("overlaps", "spaced", "hangs"):
        service.run("plan", "pause", busy)

    # Run now (service-backup's manual backup) a plan whose next slot is months away.
    queued = json.loads(service.run("--json", "plan", "run", "rare").stdout)
    wait_for("the manual run", ran("default/rare", "succeeded"))
    (manual,) = service.runs("--plan", "rare")
    assert manual["id"] == queued["run_id"]
    assert manual["trigger"] == "manual" and manual["snapshot_id"]

    # Pause: slots are recorded as skipped, none runs; resume: they run again.
    service.run("plan", "pause", "shop-db")
    time.sleep(3.5)  # a run queued just before the pause may still start
    before = service.count("default/shop-db")
    time.sleep(4)
    assert service.count("default/shop-db") == before
    assert service.plans()["default/shop-db"]["paused"]
    service.run("plan", "resume", "shop-db")
    wait_for("a run after resume", lambda: service.count("default/shop-db") > before)

    # Reload: a new plan in the file runs without a restart.
    service.config.write_text(
        config + f"  added:\n    type: directory\n    paths: [{tmp_path / 'files'}]\n"
        '    schedule: "*/2 * * * * *"\n'
    )
    service.run("serve", "--reload")
    wait_for("the added plan's run", ran("default/added", "succeeded"))

    assert service.stop() == 0
    status = service.plans()
    assert status["default/shop-db"]["last_success"] is not None
    assert status["default/hangs"]["failed"] >= 1
    runs = service.runs()
    show = service.run("runs", "show", runs[0]["id"][:8]).stdout
    assert runs[0]["id"] in show
    failed = json.loads(service.run("--json", "runs", "--state", "timed_out").stdout)
    assert failed and {r["plan"] for r in failed} == {"default/hangs"}
    # Retention ran after the backups (those queued when the service stopped wait for the
    # next start).
    retention = [r for r in runs if r["kind"] == "retention" and r["state"] != "queued"]
    assert retention
    assert all(r["state"] == "succeeded" for r in retention), [
        (r["state"], r["error"]) for r in retention
    ]
    # Secrets never reach the log.
    log = service.log.read_text()
    assert PG_PASSWORD not in log and PASSWORD.decode() not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("backup_guid") and line.get("plan") == "default/shop-db" for line in lines)


def test_sigterm_ends_running_jobs_after_the_grace_and_a_restart_catches_up(
    service: Service, cli_repo: str, tmp_path: Path
) -> None:
    (tmp_path / "files").mkdir()
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    service.config.write_text(
        f"repository: {{location: {cli_repo}, password_env: REPO_PW}}\n"
        "sources:\n"
        f"  slow: {{type: directory, paths: [{tmp_path / 'files'}], "
        f'schedule: "*/2 * * * * *", hooks: {{backup: {slow}}}}}\n'
        f"  quick: {{type: directory, paths: [{tmp_path / 'files'}], "
        f'schedule: "*/3 * * * * *", start_window: 1s}}\n'
    )
    service.start("--stop-grace", "2")
    wait_for("the slow run to start", lambda: service.count("default/slow", "running") == 1)
    wait_for("a quick run", lambda: service.count("default/quick", "succeeded") >= 1)
    stopped = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - stopped < 20  # the grace, not the hook's 30 seconds
    (run,) = [r for r in service.runs("--plan", "slow") if r["state"] != "queued"]
    assert run["state"] == "failed" and "the service stopped" in run["error"]

    before = {r["id"] for r in service.runs("--plan", "quick")}
    time.sleep(8)  # down for two slots of 'quick' and more: their windows close unseen
    service.start()
    wait_for("a run after the restart", lambda: service.count("default/quick") > len(before))
    assert service.stop() == 0
    # The slots of the downtime are missed, and made up for by one run, not one each
    # (a catch-up run, or the slot in its window when the first tick came: tick tests
    # cover which).
    assert service.plans()["default/quick"]["missed"] >= 2
    after = [r for r in service.runs("--plan", "quick") if r["id"] not in before]
    first = min(r["queued_at"] for r in after)
    assert sum(r["queued_at"] == first for r in after) == 1
    assert all(r["trigger"] in ("catch_up", "schedule") for r in after)
