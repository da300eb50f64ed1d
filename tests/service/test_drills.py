"""Restore drills against real servers: PostgreSQL, MariaDB and Redis as sources, each
drilled into its own scratch server; SQLite and folders into temporary places; the
drills recorded in a real catalog (the service's database, on a private cluster).

Every drill runs ``safehold drill`` as a real process, as an operator would.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from safehold.config import load_config
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.plans import plans_from_config, sync_plans
from tests.conftest import PASSWORD, CliResult, CliRunner
from tests.servers.mysql import MysqlServer
from tests.servers.postgres import PgServer
from tests.servers.private_cluster import database_url, fresh_database
from tests.servers.redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("drills")]

_names = itertools.count()


def sandboxes(tmpdir: str) -> set[str]:
    """The drill sandboxes in ``tmpdir`` (each is a safehold-drill-* temporary folder)."""
    return set(glob.glob(os.path.join(tmpdir, "safehold-drill-*")))


@dataclass
class Drills:
    """A repository, a configuration file and a catalog database for the drills."""

    cli: CliRunner
    tmp: Path
    repo: str
    url: str
    engine: Engine
    tmpdir: str  # the drills' TMPDIR: where their sandboxes are made

    def config(self, sources: str) -> Path:
        path = self.tmp / "safehold.yaml"
        path.write_text(
            f"repository: {{location: {self.repo}, password_env: SH_TEST_PW}}\n"
            f"service: {{state_dir: {self.tmp / 'state'}}}\nsources:\n{sources}"
        )
        return path

    def backup(self, source: str) -> str:
        done = self.cli("--json", "backup", "--config", str(self.tmp / "safehold.yaml"),
                        "--source", source)  # fmt: skip
        assert done.code == 0, done.output
        return str(json.loads(done.stdout)["snapshot"])

    def drill(self, plan: str, *extra: str) -> tuple[CliResult, dict[str, Any]]:
        done = self.cli("--json", "drill", plan, "--config", str(self.tmp / "safehold.yaml"),
                        "--database", self.url, *extra, timeout=300)  # fmt: skip
        # The sandbox is gone afterwards, whatever the drill's result.
        assert sandboxes(self.tmpdir) == set(), done.output
        assert done.stdout, done.output
        return done, json.loads(done.stdout)

    def recorded(self, plan: str | None = None) -> list[dict[str, Any]]:
        args = ["--plan", plan] if plan else []
        done = self.cli("--json", "drills", "--config", str(self.tmp / "safehold.yaml"),
                        "--database", self.url, *args)  # fmt: skip
        assert done.code == 0, done.output
        return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def drills(
    private_cluster: Cluster, cli: CliRunner, cli_repo: str, tmp_path: Path
) -> Iterator[Drills]:
    name = f"drills_{os.getpid()}_{next(_names)}"
    engine = fresh_database(private_cluster, name)
    prepare(engine)
    url = database_url(private_cluster, name).render_as_string(hide_password=False)
    # The drills' own temporary folder (their sandboxes go there), outside pytest's 0700
    # folders: the scratch servers' users must reach it.
    tmpdir = tempfile.mkdtemp(prefix="sh-drills-", dir="/tmp")
    os.chmod(tmpdir, 0o711)

    def run(*args: str, **kw: Any) -> CliResult:
        env = {"SH_TEST_PW": PASSWORD.decode(), "TMPDIR": tmpdir, **kw.pop("env", {})}
        return cli(*args, env=env, **kw)

    try:
        yield Drills(run, tmp_path, cli_repo, url, engine, tmpdir)
    finally:
        engine.dispose()
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_a_postgres_drill_restores_into_a_scratch_cluster_and_counts_rows(
    drills: Drills, pg_server: PgServer
) -> None:
    db = f"shop_{os.getpid()}_{next(_names)}"
    pg_server.psql(f"CREATE DATABASE {db}")
    pg_server.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric);"
        "INSERT INTO orders SELECT i, i * 2 FROM generate_series(1, 1234) i;"
        "CREATE TABLE notes (id int); INSERT INTO notes VALUES (1), (2);",
        db,
    )
    drills.config(
        f"  shop:\n    type: postgres\n    url: {pg_server.url(db)}\n"
        "    drill: {rto_target: 15m, check: {default: {min_rows: 1000}}}\n"
        f"  shop-q:\n    type: postgres\n    url: {pg_server.url(db)}\n"
        "    drill:\n      check: {query: 'SELECT count(*), sum(total) FROM orders', "
        "expect: '1234\t1523990'}\n"
    )
    snap = drills.backup("shop")
    done, out = drills.drill("shop")
    assert done.code == 0, done.output
    assert out["result"] == "passed" and out["snapshot"] == snap
    assert f"{db}.public.orders: 1234 rows" in out["check_output"]
    assert out["restore_seconds"] > 0 and out["rto_target_seconds"] == 900
    assert out["over_target"] is False
    assert [p["phase"] for p in out["phases"]] == ["sandbox", "restore", "check"]
    # The source's own database was left alone: the drill restored into its sandbox.
    assert pg_server.psql("SELECT count(*) FROM orders", db) == "1234"

    drills.backup("shop-q")
    done, out = drills.drill("shop-q")
    assert done.code == 0, done.output
    assert "query returned the expected" in out["check_output"]

    [row] = drills.recorded("shop")
    assert row["result"] == "passed" and row["snapshot_id"] == snap
    assert row["restore_seconds"] == pytest.approx(out_restore := row["restore_seconds"])
    assert out_restore > 0 and row["rtos"] == [out_restore]


def test_a_check_whose_expectation_fails_exits_4_and_is_recorded_failed(
    drills: Drills, mysql_server: MysqlServer
) -> None:
    db = f"crm_{os.getpid()}_{next(_names)}"
    mysql_server.sql(
        f"CREATE DATABASE {db}; USE {db}; CREATE TABLE people (id INT PRIMARY KEY, name TEXT);"
        "INSERT INTO people VALUES (1, 'ada'), (2, 'grace'), (3, 'edsger');"
    )
    url = f"mysql://root@127.0.0.1:{mysql_server.port}"
    drills.config(
        f"  crm:\n    type: mysql\n    url: {url}\n    databases: [{db}]\n"
        "    drill: {check: {query: 'SELECT name FROM people ORDER BY id', "
        'expect: "ada\\ngrace\\nedsger"}}\n'
        f"  crm-wrong:\n    type: mysql\n    url: {url}\n    databases: [{db}]\n"
        "    drill: {check: {query: 'SELECT COUNT(*) FROM people', expect: 4}}\n"
        f"  crm-default:\n    type: mysql\n    url: {url}\n    databases: [{db}]\n"
        "    drill: {}\n"
    )
    drills.backup("crm")
    done, out = drills.drill("crm")
    assert done.code == 0, done.output
    assert out["result"] == "passed"

    drills.backup("crm-default")
    done, out = drills.drill("crm-default")
    assert done.code == 0, done.output
    assert f"{db}.people: 3 rows" in out["check_output"]

    drills.backup("crm-wrong")
    done, out = drills.drill("crm-wrong")
    assert done.code == 4, done.output
    assert out["result"] == "failed" and out["failed_phase"] == "check"
    assert "query returned\n3\nbut drill.check.expect is\n4" in out["check_output"]
    assert "the drill's check failed" in done.stderr
    [row] = drills.recorded("crm-wrong")
    assert row["result"] == "failed" and row["failed_phase"] == "check"
    assert "but drill.check.expect is" in row["check_output"]
    with drills.engine.connect() as db_conn:
        run = db_conn.execute(
            text("SELECT kind, state, phases FROM runs WHERE id = :r"), {"r": row["run_id"]}
        ).one_or_none()
    # No plan row for a drill without a schedule in this catalog: recorded without a run.
    assert row["run_id"] is None and run is None


def test_a_redis_drill_loads_the_rdb_into_a_scratch_server(
    drills: Drills, redis_server: RedisServer
) -> None:
    prefix = f"drill{os.getpid()}{next(_names)}:"
    with redis_server.client() as conn:
        for i in range(30):
            conn.call("SET", f"{prefix}{i}", f"value {i}")
        conn.call("RPUSH", f"{prefix}list", "a", "b", "c")
        size = conn.call("DBSIZE")
    drills.config(
        f"  cache:\n    type: redis\n    url: redis://127.0.0.1:{redis_server.port}\n"
        "    drill: {rto_target: 1m, check: {default: {sample_keys: 5}}}\n"
    )
    drills.backup("cache")
    done, out = drills.drill("cache")
    assert done.code == 0, done.output
    assert f"DBSIZE {size}" in out["check_output"]
    assert len(out["check_output"].splitlines()) == 1 + min(5, int(str(size)))


def _sqlite(path: Path, rows: int) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    db.commit()
    db.close()


def test_sqlite_and_a_command_check_get_the_sandbox_in_their_environment(
    drills: Drills, tmp_path: Path
) -> None:
    _sqlite(tmp_path / "app.db", 50)
    script = tmp_path / "check.sh"
    script.write_text(
        '#!/bin/sh\necho "checking $SAFEHOLD_DRILL_KIND at $SAFEHOLD_DRILL_PATH"\n'
        'test "$(sqlite3 "$SAFEHOLD_DRILL_PATH" "SELECT count(*) FROM t")" = 50 || '
        '{ echo "wrong count"; exit 1; }\n'
    )
    script.chmod(0o755)
    config = drills.config(
        f"  app:\n    type: sqlite\n    path: {tmp_path / 'app.db'}\n"
        '    drill: {schedule: "@daily"}\n'
        f"  app-cmd:\n    type: sqlite\n    path: {tmp_path / 'app.db'}\n"
        f"    drill: {{check: {{command: {script}}}}}\n"
    )
    # The drill plan is in the catalog (as serve writes it): the drill is its run.
    sync_plans(drills.engine, plans_from_config(load_config(str(config))).values())
    drills.backup("app")
    done, out = drills.drill("app")
    assert done.code == 0, done.output
    assert "integrity_check: ok" in out["check_output"] and "t: 50 rows" in out["check_output"]
    [row] = drills.recorded("app")
    with drills.engine.connect() as db:
        run = db.execute(
            text(
                "SELECT p.name, r.kind, r.state, r.snapshot_id, r.phases FROM runs r "
                "JOIN plans p ON p.id = r.plan_id WHERE r.id = :r"
            ),
            {"r": row["run_id"]},
        ).one()
        lines = (
            db.execute(
                text("SELECT message FROM run_lines WHERE run_id = :r ORDER BY seq"),
                {"r": row["run_id"]},
            )
            .scalars()
            .all()
        )
    assert run[:4] == ("app.drill", "drill", "succeeded", out["snapshot"])
    assert [p["phase"] for p in run.phases] == ["sandbox", "restore", "check"]
    assert lines[0].startswith("drill.started") and lines[-1].startswith("drill.finished")
    assert PASSWORD.decode() not in " ".join(lines)

    drills.backup("app-cmd")
    done, out = drills.drill("app-cmd")
    assert done.code == 0, done.output
    assert "checking sqlite at /" in out["check_output"]
    assert "safehold-drill-" in out["check_output"]


def _chains(drills: Drills) -> list[dict[str, Any]]:
    done = drills.cli("-r", drills.repo, "--json", "chain", "list")
    assert done.code == 0, done.output
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_rotating_walks_back_through_the_chains_and_a_damaged_pack_fails_the_drill(
    drills: Drills, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("first\n")
    drills.config(
        f"  files:\n    type: directory\n    paths: [{data}]\n    chain_length: 1\n"
        "    drill: {target: rotating, on_failure: {finish_chain: true}}\n"
    )
    # chain_length 1: a full and one incremental per chain -> three chains of points.
    taken = []
    for i in range(5):
        (data / f"f{i}.bin").write_bytes(os.urandom(20_000))
        taken.append(drills.backup("files"))
    chains = _chains(drills)
    assert len(chains) == 3
    newest_per_chain = [c["snapshots"][-1]["id"] for c in reversed(chains)]

    proven = []
    for _ in range(4):
        done, out = drills.drill("files")
        assert done.code == 0, done.output
        assert "hashed" in out["check_output"]
        proven.append(out["snapshot"])
    # Newest first, then each older chain's newest point, then round again.
    assert proven == [*newest_per_chain, newest_per_chain[0]]
    rows = drills.recorded("files")
    assert [r["snapshot_id"] for r in rows] == proven[::-1]
    assert len(rows[0]["rtos"]) == 4 and rows[0]["trend"] in ("better", "worse", "same")

    # Damage every data pack: the next drill fails in its restore, is recorded so, and
    # finishes the current chain so that the next backup is a full one.
    for pack in glob.glob(os.path.join(drills.repo, "data", "*", "*")):
        with open(pack, "r+b") as f:
            f.seek(40)
            f.write(b"\xff" * 32)
    done, out = drills.drill("files", "--snapshot", taken[-1][:12])
    assert done.code == 4, done.output
    assert out["result"] == "failed" and out["failed_phase"] == "restore"
    assert out["finished_chain"] and "next backup is a full one" in done.stderr
    assert any(c["finished"] and c["id"] == out["finished_chain"] for c in _chains(drills))
    [row] = [r for r in drills.recorded("files") if r["result"] == "failed"]
    assert row["failed_phase"] == "restore" and row["error"]


def test_an_interrupted_drill_stops_its_scratch_server_and_removes_its_sandbox(
    drills: Drills,
    pg_server: PgServer,
    tmp_path: Path,
    cli_env: dict[str, str],
    sigint_default: None,
) -> None:
    import signal
    import subprocess
    import sys
    import time

    db = f"slow_{os.getpid()}_{next(_names)}"
    pg_server.psql(f"CREATE DATABASE {db}")
    pg_server.psql("CREATE TABLE t AS SELECT generate_series(1, 10) AS n", db)
    script = tmp_path / "slow-check.sh"
    script.write_text("#!/bin/sh\ntouch checking\nsleep 60\n")
    script.chmod(0o755)
    drills.config(
        f"  slow:\n    type: postgres\n    url: {pg_server.url(db)}\n"
        f"    drill: {{check: {{command: {script}}}}}\n"
    )
    drills.backup("slow")
    proc = subprocess.Popen(
        [sys.executable, "-m", "safehold", "drill", "slow", "--config",
         str(tmp_path / "safehold.yaml"), "--database", drills.url],
        env={**cli_env, "SH_TEST_PW": PASSWORD.decode(), "TMPDIR": drills.tmpdir},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    made: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None:
        made = [d for d in sandboxes(drills.tmpdir) if os.path.exists(os.path.join(d, "checking"))]
        if made:
            break
        time.sleep(0.2)
    assert made, proc.communicate(timeout=30)
    postmaster = int(Path(made[0], "data", "postmaster.pid").read_text().split()[0])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not os.path.exists(made[0])
    with pytest.raises(ProcessLookupError):
        os.kill(postmaster, 0)
    [row] = drills.recorded("slow")
    assert row["result"] == "failed" and "stopped" in row["error"]
