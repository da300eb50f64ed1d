"""A restore job through the API, as issue 18 asks: a PostgreSQL plan backed up by a real
``safehold serve``, its restore point restored through the API into a new database on a
real PostgreSQL server, checked by a query."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.e2e.waiting import wait_for
from tests.servers.postgres import PgServer

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("postgres")]


@pytest.fixture
def serve(
    pg_server: PgServer, make_state_dir: Callable[[], Path], tmp_path: Path
) -> Iterator[tuple[str, str, str]]:
    """``serve`` with one PostgreSQL plan; (API URL, admin token, database name)."""
    db = f"shop_{os.getpid()}"
    pg_server.psql(f"DROP DATABASE IF EXISTS {db}; DROP DATABASE IF EXISTS {db}_copy")
    pg_server.psql(f"CREATE DATABASE {db}")
    pg_server.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric(10,2));"
        "INSERT INTO orders SELECT i, i * 1.5 FROM generate_series(1, 2500) i",
        db,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env.update(REPO_PW=PASSWORD.decode(), HOME=str(tmp_path / "home"),
               SAFEHOLD_CACHE_DIR=str(tmp_path / "cache"))  # fmt: skip
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository: {{location: {tmp_path / 'repo'}, password_env: REPO_PW}}\n"
        f"service: {{state_dir: {make_state_dir()}}}\n"
        f"sources:\n  shop:\n    type: postgres\n    url: {pg_server.url(db)}\n"
        '    schedule: "@yearly"\n'
    )

    def safehold(*args: str, **extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "safehold", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    safehold("-r", str(tmp_path / "repo"), "init", "--kdf-log2n", "10",
             SAFEHOLD_PASSWORD=PASSWORD.decode())  # fmt: skip
    token = safehold("token", "create", "--config", str(config), "--project", "default",
                     "--role", "admin").strip()  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "safehold", "serve", "--config", str(config), "--workers",
             "1", "--listen", "127.0.0.1:0"], env=env, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        found: list[str] = []

        def listening() -> bool:
            assert proc.poll() is None, log.read_text()
            found[:] = re.findall(r"API listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            return bool(found)

        wait_for("the API to listen", listening, timeout=90)
        yield found[0], token, db
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pg_server.psql(f"DROP DATABASE IF EXISTS {db}_copy", check=False)


def wait_run(client: httpx.Client, run_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def ended() -> bool:
        found[:] = [client.get(f"/api/v1/runs/{run_id}").json()]
        return found[0]["state"] not in ("queued", "running")

    wait_for(f"run {run_id} to end", ended, timeout=180)
    return found[0]


def test_a_postgres_point_restored_into_a_new_database_through_the_api(
    serve: tuple[str, str, str], pg_server: PgServer
) -> None:
    url, token, db = serve
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as client:  # fmt: skip
        backup = wait_run(client, client.post("/api/v1/plans/shop/run").json()["run_id"])
        assert backup["state"] == "succeeded", backup
        [point] = client.get("/api/v1/plans/shop/restore-points").json()["items"]
        assert point["snapshot_id"] == backup["snapshot_id"] and point["chain_seq"] == 0
        # The source changes after the backup: the copy must hold the backed-up rows.
        pg_server.psql("DELETE FROM orders WHERE id > 2000", db)
        queued = client.post(f"/api/v1/restore-points/{point['id']}/restore",
                             json={"target": f"{db}_copy"})  # fmt: skip
        assert queued.status_code == 202, queued.text
        restored = wait_run(client, queued.json()["run_id"])
        assert restored["state"] == "succeeded", restored
        assert restored["kind"] == "restore" and restored["snapshot_id"] == point["snapshot_id"]
        lines = client.get(f"/api/v1/runs/{restored['id']}").json()["lines"]
        assert any(line["message"].startswith("run.finished") for line in lines), lines
        # Again without replace: the target holds tables now; the job fails and says so.
        again = wait_run(client, client.post(
            "/api/v1/restore-jobs", json={"restore_point": str(point["id"]),
                                          "target": f"{db}_copy"}).json()["run_id"])  # fmt: skip
        assert again["state"] == "failed" and "already holds" in (again["error"] or "")
        # Deleting the point forgets its snapshot in the repository; it is listed as gone.
        deleted = client.delete(f"/api/v1/restore-points/{point['id']}")
        assert deleted.status_code == 202, deleted.text
        assert wait_run(client, deleted.json()["run_id"])["state"] == "succeeded"
        assert client.get("/api/v1/plans/shop/restore-points").json()["items"] == []
        gone = client.get(f"/api/v1/restore-points/{point['id']}").json()
        assert gone["forgotten_at"] is not None
    copied = pg_server.psql("SELECT count(*), sum(total) FROM orders", f"{db}_copy")
    assert copied == "2500|4689375.00"  # 1.5 * (1 + ... + 2500): the rows backed up
    assert pg_server.psql("SELECT count(*) FROM orders", db) == "2000"


def test_the_commands_against_a_service_elsewhere(
    serve: tuple[str, str, str], pg_server: PgServer, tmp_path: Path
) -> None:
    """plans, plan run, runs (jobs), restore-points and a restore job with --wait, through
    --server and a token file instead of the catalog, with the local commands' output."""
    url, token, db = serve
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env.update(SAFEHOLD_SERVER=url, SAFEHOLD_TOKEN_FILE=str(token_file),
               HOME=str(tmp_path / "home"))  # fmt: skip

    def safehold(*args: str, code: int = 0) -> str:
        done = subprocess.run([sys.executable, "-m", "safehold", *args], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == code, done.stderr
        return done.stdout

    [plan] = json.loads(safehold("--json", "plans"))
    assert plan["plan"] == "default/shop" and plan["last_success"] is None
    queued = json.loads(safehold("--json", "plan", "run", "shop"))
    assert queued["plan"] == "default/shop" and queued["state"] == "queued"

    def ended() -> bool:
        runs = json.loads(safehold("--json", "jobs", "--kind", "backup"))
        return bool(runs) and runs[0]["state"] not in ("queued", "running")

    wait_for("the backup to end", ended, timeout=180)
    [run] = json.loads(safehold("--json", "runs"))
    assert (run["plan"], run["state"]) == ("default/shop", "succeeded")
    shown = safehold("runs", "show", run["id"][:8])
    assert "succeeded" in shown and run["id"] in shown
    points = json.loads(safehold("--json", "restore-points"))["restore_points"]
    assert [p["snapshot_id"] for p in points] == [run["snapshot_id"]]
    printed = safehold("restore-points", "restore", str(points[0]["id"]), "--target",
                       f"{db}_copy", "--wait")  # fmt: skip
    assert "succeeded" in printed
    assert pg_server.psql("SELECT count(*) FROM orders", f"{db}_copy") == "2500"
    deleted = json.loads(safehold("--json", "restore-points", "delete", str(points[0]["id"])))
    assert deleted["state"] == "queued"
    wait_for("the point to be forgotten", lambda: not json.loads(
        safehold("--json", "restore-points"))["restore_points"], timeout=120)  # fmt: skip
    # Errors keep their meaning: an unknown plan is a usage error (exit 2) with its hint.
    missing = subprocess.run([sys.executable, "-m", "safehold", "plan", "run", "nope"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "no plan 'nope'" in missing.stderr
    # Destinations and plans made through the service, from here too (an admin's token).
    (tmp_path / "dest.yaml").write_text(f"location: {tmp_path / 'repo'}\npassword: s3cret-pw\n")
    made = json.loads(safehold("--json", "destinations", "add", "far", "--from-file",
                               str(tmp_path / "dest.yaml")))  # fmt: skip
    assert (made["project"], made["name"]) == ("default", "far") and "s3cret" not in str(made)
    assert "far" in safehold("destinations", "list")
    (tmp_path / "plan.yaml").write_text(
        f"repository: far\ntype: directory\npaths: [{tmp_path}]\nschedule: '@yearly'\n"
    )
    created = safehold("plans", "create", "files", "--from-file", str(tmp_path / "plan.yaml"))
    assert "plan default/files (api)" in created and "repository: far" in created
    shown = json.loads(safehold("--json", "plans", "show", "files"))
    assert shown["source"]["paths"] == [str(tmp_path)]
    in_use = subprocess.run([sys.executable, "-m", "safehold", "destinations", "remove", "far"],
                            env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert in_use.returncode != 0 and "files" in in_use.stderr
    assert "deleted" in safehold("plans", "delete", "files")
    assert json.loads(safehold("--json", "destinations", "remove", "far"))["removed"] is True
    assert "no destinations" in safehold("destinations", "list")


def test_the_catalog_is_resynced_through_the_api(
    serve: tuple[str, str, str], tmp_path: Path
) -> None:
    """A backup made by hand (``backup --config``) is in the repository but no run names
    it: an admin's resync through the API records it; other roles may not ask."""
    url, token, _db = serve
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env.update(REPO_PW=PASSWORD.decode(), HOME=str(tmp_path / "home"),
               SAFEHOLD_CACHE_DIR=str(tmp_path / "cache"))  # fmt: skip
    made = subprocess.run(
        [sys.executable, "-m", "safehold", "backup", "--config", str(tmp_path / "safehold.yaml"),
         "--source", "shop"], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    with httpx.Client(base_url=url, timeout=120,
                      headers={"Authorization": f"Bearer {token}"}) as admin:  # fmt: skip
        first = admin.post("/api/v1/catalog/resync")
        assert first.status_code == 200, first.text
        found = first.json()
        assert found["plans"] == ["default/shop"] and found["snapshots"] == 1
        assert [a["plan"] for a in found["added"]] == ["default/shop"]
        again = admin.post("/api/v1/catalog/resync").json()
        assert (again["added"], again["known"]) == ([], 1)
        [run] = admin.get("/api/v1/runs", params={"plan": "shop"}).json()["items"]
        assert (run["trigger"], run["state"]) == ("resync", "succeeded")
        ops = admin.post("/api/v1/tokens", json={"role": "operator", "name": "ops"}).json()["token"]
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {ops}"}) as operator:  # fmt: skip
        assert operator.post("/api/v1/catalog/resync").status_code == 403
