"""``safehold serve`` runs a source's drill plan on its own schedule: real processes, its
private PostgreSQL, drills of a SQLite source recorded with their runs; and the drill plan
of a folder plan made through the service, its password only sealed in the catalog."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.e2e.serving import Service, service_in
from tests.e2e.waiting import wait_for

pytestmark = pytest.mark.slow


def make_sqlite(path: Path, rows: int) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    db.commit()
    db.close()


@pytest.fixture
def service(make_state_dir: Callable[[], Path], tmp_path: Path) -> Iterator[Service]:
    with service_in(tmp_path, make_state_dir()) as svc:
        yield svc


def test_serve_runs_a_drill_plan_on_its_schedule(service: Service, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init = subprocess.run(
        [sys.executable, "-m", "safehold", "-r", str(repo), "init", "--kdf-log2n", "10"],
        env={**service.env, "SAFEHOLD_PASSWORD": PASSWORD.decode()},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    make_sqlite(tmp_path / "app.db", 40)
    service.config.write_text(
        f"""\
repository: {{location: "{repo}", password_env: REPO_PW}}
sources:
  app:
    type: sqlite
    path: {tmp_path / "app.db"}
    schedule: "*/2 * * * * *"
    drill:
      schedule: "*/3 * * * * *"
      target: rotating
      rto_target: 10m
"""
    )
    service.start()
    wait_for("a backup of app", lambda: service.count("default/app", "succeeded") >= 1)
    # Beside it, a plan made through the service (the same instance: one start for both).
    make_api_plan(service, tmp_path, repo)
    wait_for(
        "two drills of app",
        lambda: service.count("default/app.drill", "succeeded", kind="drill") >= 2,
        timeout=120,
    )
    wait_for(
        "a drill of the API plan web",
        lambda: service.count("default/web.drill", "succeeded", kind="drill") >= 1,
        timeout=120,
    )
    plans = service.plans()
    assert "default/app.drill" in plans and "default/web.drill" in plans
    web = json.loads(service.run("--json", "drills", "--plan", "default/web").stdout)
    proven = [r for r in web if r["result"] == "passed"]
    assert proven and all(r["run_id"] and r["snapshot_id"] for r in proven), web
    generated = service.state_dir / "plans" / "default" / "web.yaml"
    assert PASSWORD.decode() not in generated.read_text()
    rows = json.loads(service.run("--json", "drills", "--plan", "default/app").stdout)
    passed = [r for r in rows if r["result"] == "passed"]
    assert len(passed) >= 2
    assert all(r["run_id"] and r["rto_target_seconds"] == 600 for r in passed)
    assert all("integrity_check: ok" in r["check_output"] for r in passed)
    runs = service.runs("--kind", "drill")
    assert {r["id"] for r in runs} >= {r["run_id"] for r in passed}
    assert service.stop() == 0


def make_api_plan(service: Service, tmp_path: Path, repo: Path) -> None:
    """Plan ``web`` (a folder, its drill every 3 s) made with the operators' commands: the
    repository's password is given once, to the catalog, and is in no file or variable."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<p>hello</p>\n")
    dest = tmp_path / "dest.yaml"
    dest.write_text(f"location: {repo}\npassword: {PASSWORD.decode()}\n")
    service.run("destinations", "add", "main", "--project", "default", "--from-file", str(dest))
    dest.unlink()
    block = tmp_path / "web.yaml"
    block.write_text(
        f"type: directory\npaths: [{tmp_path / 'site'}]\nschedule: '*/2 * * * * *'\n"
        "repository: main\ndrill: {schedule: '*/3 * * * * *'}\n"
    )
    service.run("plans", "create", "web", "--project", "default", "--from-file", str(block))
