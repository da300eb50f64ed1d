"""Several ``safehold serve`` processes on one shared PostgreSQL: every slot once, never
two runs of a plan at once, a killed process's runs retried by the others, and a
database that goes away and comes back."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PASSWORD
from tests.e2e.waiting import wait_for
from tests.servers.postgres import PgServer

pytestmark = pytest.mark.slow

PLANS = 200
SPEED = 30.0  # schedule time runs 30 times faster: a minute every two seconds


class Cluster:
    """Several serve processes sharing one database and one configuration file."""

    def __init__(self, tmp: Path, server: PgServer, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.server = server
        self.env = env
        self.url = server.url("serve_shared")
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"serve{len(self.procs)}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "safehold", "--log-format", "json", "serve",
             "--config", str(self.tmp / "safehold.yaml"), "--database", self.url,
             "--state-dir", str(self.tmp / f"state{len(self.procs)}"),
             "--tick", "0.5", "--workers", "2", "--listen", "127.0.0.1:0", *extra],
            env=self.env, stdout=log, stderr=log,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]

    def count(self, sql: str, *args: Any) -> int:
        try:
            return int(self.query(sql, *args)[0][0])
        except psycopg.Error:
            return 0  # not migrated yet, or the server is down


@pytest.fixture
def cluster(
    tmp_path: Path, pg_server_factory: Callable[[], PgServer], cli_repo: str
) -> Iterator[Cluster]:
    server = pg_server_factory()
    server.psql("CREATE DATABASE serve_shared")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env.update(REPO_PW=PASSWORD.decode(), SAFEHOLD_CACHE_DIR=str(tmp_path / "cache"))
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "safehold.yaml").write_text(
        f"repository: {{location: {cli_repo}, password_env: REPO_PW}}\nsources:\n"
    )
    found = Cluster(tmp_path, server, env)
    found.repo = cli_repo  # type: ignore[attr-defined]
    try:
        yield found
    finally:
        for proc in found.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def write_plans(cluster: Cluster, count: int, schedule: str, extra: str = "") -> None:
    lines = [f"repository: {{location: {cluster.repo}, password_env: REPO_PW}}", "sources:"]  # type: ignore[attr-defined]
    for i in range(count):
        lines.append(
            f'  p{i:03d}: {{type: command, command: "echo plan {i}", name: out.txt, '
            f'schedule: "{schedule}", retry_delay: 1s{extra}}}'
        )
    (cluster.tmp / "safehold.yaml").write_text("\n".join(lines) + "\n")


def test_three_processes_share_the_work_and_survive_a_kill(cluster: Cluster) -> None:
    write_plans(cluster, PLANS, "* * * * *")
    origin = time.time()
    cluster.env["SAFEHOLD_TEST_CLOCK"] = f"{origin}:{SPEED}"
    for _ in range(3):
        cluster.start()
    running = "SELECT count(*) FROM runs WHERE state = 'running' AND worker LIKE %s"
    victim = cluster.procs[1]
    # Ten minutes of schedule time pass in 20 seconds; kill one process while it runs jobs.
    wait_for("a run on the second process", lambda: cluster.count(running, f"%-{victim.pid}") > 0)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.time()
    # Its runs end as "worker lost" within the stall window, and are retried by the others.
    lost = "SELECT count(*) FROM runs WHERE state = 'worker_lost'"
    wait_for("the killed process's runs to end as lost", lambda: cluster.count(lost) > 0)
    assert time.time() - killed_at < 30 + 25  # the stall window, and a few ticks
    retried = (
        "SELECT count(*) FROM runs r JOIN runs l ON l.slot_id = r.slot_id "
        "WHERE l.state = 'worker_lost' AND r.trigger = 'retry' AND r.state = 'succeeded'"
    )
    try:
        wait_for("the lost runs retried", lambda: cluster.count(retried) >= 1)
    except AssertionError:
        pairs = cluster.query(
            "SELECT l.id, r.id, r.state, r.job_id FROM runs l LEFT JOIN runs r "
            "ON r.slot_id = l.slot_id AND r.trigger = 'retry' WHERE l.state = 'worker_lost'"
        )
        raise AssertionError(f"lost runs and their retries: {pairs}") from None
    schedule_end = origin + (time.time() - origin) * SPEED
    for proc in cluster.procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in cluster.procs:
        assert proc.wait(timeout=120) in (0, -signal.SIGKILL)

    # Every slot of every plan is in the ledger exactly once, a minute apart, no gaps.
    slots: dict[str, list[datetime]] = defaultdict(list)
    for name, slot_at in cluster.query(
        "SELECT p.name, s.slot_at FROM slots s JOIN plans p ON p.id = s.plan_id ORDER BY 1, 2"
    ):
        slots[name].append(slot_at)
    assert len(slots) == PLANS
    for times in slots.values():
        assert len(times) == len(set(times))
        assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(times))
        assert times[-1].timestamp() <= schedule_end
    assert min(len(t) for t in slots.values()) >= 10
    # No plan ever had two runs at once (from the runs' own start and end times).
    spans: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for name, started, ended in cluster.query(
        "SELECT p.name, r.started_at, coalesce(r.ended_at, now()) FROM runs r "
        "JOIN plans p ON p.id = r.plan_id WHERE r.started_at IS NOT NULL "
        "AND r.state <> 'worker_lost' ORDER BY 1, 2"
    ):
        spans[name].append((started, ended))
    for runs in spans.values():
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(runs)), runs
    states = dict(cluster.query("SELECT state, count(*) FROM runs GROUP BY state"))
    assert states.get("succeeded", 0) >= 20 and "failed" not in states, states
    # The repository is whole.
    check = subprocess.run(
        [sys.executable, "-m", "safehold", "-r", cluster.repo, "check"],  # type: ignore[attr-defined]
        env={**cluster.env, "SAFEHOLD_PASSWORD": PASSWORD.decode()},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_database_goes_away_and_comes_back(cluster: Cluster, tmp_path: Path) -> None:
    hook = tmp_path / "slow.sh"
    hook.write_text("#!/bin/sh\nsleep 6\n")
    hook.chmod(0o755)
    write_plans(cluster, 3, "*/2 * * * * *", f", hooks: {{backup: {hook}}}")
    proc = cluster.start()
    running = "SELECT count(*) FROM runs WHERE state = 'running'"
    wait_for("runs under way", lambda: cluster.count(running) >= 2)
    cluster.server.stop()
    time.sleep(12)  # the runs' children finish meanwhile; their ends wait for the database
    assert proc.poll() is None, "the service must not die with its database"
    cluster.server.start()
    started = time.time()
    # The runs that went on during the outage end cleanly once the database is back...
    wait_for(
        "the runs of the outage to end",
        lambda: cluster.count("SELECT count(*) FROM runs WHERE state = 'running' "
                              "AND started_at < to_timestamp(%s)", started) == 0,
    )  # fmt: skip
    # ...and new slots run again, without a restart.
    after = "SELECT count(*) FROM runs WHERE state = 'succeeded' AND started_at > to_timestamp(%s)"
    wait_for("runs after the outage", lambda: cluster.count(after, started) >= 2)
    # A whole minute without it: the runs under way are stopped (the worker cannot tell
    # whether others rerun them), recorded as lost when it is back, and retried.
    wait_for("runs under way again", lambda: cluster.count(running) >= 1)
    cluster.server.stop()
    time.sleep(60)
    assert proc.poll() is None
    cluster.server.start()
    back = time.time()
    wait_for(
        "the runs of the long outage to end",
        lambda: cluster.count("SELECT count(*) FROM runs WHERE state = 'running' "
                              "AND started_at < to_timestamp(%s)", back) == 0,
    )  # fmt: skip
    wait_for("runs after the long outage", lambda: cluster.count(after, back) >= 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    # Nothing was recorded twice: one row per slot, one run per slot and attempt.
    dupes = cluster.query(
        "SELECT slot_id, attempt, count(*) FROM runs WHERE slot_id IS NOT NULL "
        "GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert dupes == []
    states = dict(cluster.query("SELECT state, count(*) FROM runs GROUP BY state"))
    assert "running" not in states, states


def test_a_worker_cut_off_from_the_database_stops_its_runs_first(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A worker that cannot reach the database for FENCE_SECONDS stops its running jobs
    (their hooks included) before the others could reap them and run them again: a run is
    never made twice at once."""
    pids = tmp_path / "pids"
    hook = tmp_path / "long.sh"
    hook.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 120\n")
    hook.chmod(0o755)
    write_plans(cluster, 1, "*/2 * * * * *", f", hooks: {{backup: {hook}}}")
    proc = cluster.start()
    running = "SELECT count(*) FROM runs WHERE state = 'running'"
    wait_for("a run under way", lambda: cluster.count(running) == 1 and pids.exists())
    hook_pid = int(pids.read_text().split()[0])
    cluster.server.stop()
    cut_at = time.monotonic()
    # FENCE_SECONDS (15) after the last heartbeat, plus the child's grace (8).
    wait_for("the hook to be stopped", lambda: not Path(f"/proc/{hook_pid}").exists(), 40)
    assert time.monotonic() - cut_at < 30  # before any other worker could reap it
    assert proc.poll() is None
    cluster.server.start()
    lost = "SELECT count(*) FROM runs WHERE state = 'worker_lost'"
    wait_for("the stopped run recorded as lost", lambda: cluster.count(lost) == 1)
    retried = "SELECT count(*) FROM runs WHERE trigger = 'retry'"
    wait_for("its retry", lambda: cluster.count(retried) == 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
