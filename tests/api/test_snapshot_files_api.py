"""A restore point's files and the diff between two points, read from a real repository
by a child process with the plan's configuration; any reader of the project may, another
project's token finds nothing; a restore of some paths needs a new target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tests.api.conftest import ROLES, Api
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]


def _safehold(*args: str) -> str:
    env = {**os.environ, "SAFEHOLD_PASSWORD": PASSWORD.decode(), "SH_TEST_PW": PASSWORD.decode()}
    done = subprocess.run([sys.executable, "-m", "safehold", *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def points(api: Api) -> Iterator[list[dict[str, Any]]]:
    """Two points of default/job: the first with a.txt and b.txt, the second with b.txt
    changed, a.txt removed and c.txt added; newest first."""
    old = os.environ.get("SH_TEST_PW")
    os.environ["SH_TEST_PW"] = PASSWORD.decode()  # the API's children read it
    repo, data, config = api.folder / "repo", api.folder / "data", api.folder / "safehold.yaml"
    _safehold("-r", str(repo), "init", "--kdf-log2n", "10")
    (data / "a.txt").write_text("alpha\n")
    (data / "b.txt").write_text("beta\n")
    for i in range(5):
        (data / f"many-{i}.log").write_text("x" * i)
    _safehold("backup", "--config", str(config), "--source", "job")
    (data / "a.txt").unlink()
    (data / "b.txt").write_text("beta, longer\n")
    (data / "c.txt").write_text("gamma\n")
    _safehold("backup", "--config", str(config), "--source", "job")
    snaps = json.loads(_safehold("-r", str(repo), "--json", "snapshots"))
    ids = [s["id"] for s in sorted(snaps, key=lambda s: s["time"])]
    with api.engine.begin() as db:
        for i, snap in enumerate(ids):
            db.execute(
                text(
                    "INSERT INTO restore_points (plan_id, project, snapshot_id, taken_at) "
                    "SELECT id, project, :s, now() + :i * interval '1 second' FROM plans "
                    "WHERE project = 'default' AND name = 'job'"
                ),
                {"s": snap, "i": i},
            )
    with api.client("default", "viewer") as client:
        found = client.get("/api/v1/plans/job/restore-points").json()["items"]
    yield found
    if old is None:
        os.environ.pop("SH_TEST_PW", None)
    else:
        os.environ["SH_TEST_PW"] = old


def test_a_folder_listed_a_page_at_a_time(api: Api, points: list[dict[str, Any]]) -> None:
    newest = points[0]["id"]
    data = str(api.folder / "data")
    with api.client("default", "viewer") as client:
        top = client.get(f"/api/v1/restore-points/{newest}/files").json()
        assert top["path"] == "/" and top["partial"] is True and top["items"][0]["type"] == "dir"
        listing = client.get(f"/api/v1/restore-points/{newest}/files",
                             params={"path": data, "limit": 3}).json()  # fmt: skip
        assert listing["total"] == 7 and listing["next_offset"] == 3
        assert [i["name"] for i in listing["items"]] == ["b.txt", "c.txt", "many-0.log"]
        rest = client.get(f"/api/v1/restore-points/{newest}/files",
                          params={"path": data, "offset": 6}).json()  # fmt: skip
        assert [i["name"] for i in rest["items"]] == ["many-4.log"]
        assert rest["next_offset"] is None and rest["items"][0]["size"] == 4
        one = client.get(f"/api/v1/restore-points/{newest}/files",
                         params={"path": f"{data}/b.txt"}).json()  # fmt: skip
        assert one["type"] == "file" and one["items"][0]["size"] == len("beta, longer\n")
        missing = client.get(f"/api/v1/restore-points/{newest}/files",
                             params={"path": f"{data}/nothing"})  # fmt: skip
        assert missing.status_code == 404, missing.text
        assert "nothing" in missing.json()["error"]["message"]


def test_the_diff_between_two_points(api: Api, points: list[dict[str, Any]]) -> None:
    newest, older = points[0]["id"], points[1]["id"]
    with api.client("default", "viewer") as client:
        reply = client.get(f"/api/v1/restore-points/{newest}/diff", params={"against": older})
    assert reply.status_code == 200, reply.text
    found = reply.json()
    changes = {c["path"].rsplit("/", 1)[-1]: c["change"] for c in found["changes"]}
    assert changes == {"a.txt": "-", "b.txt": "M", "c.txt": "+", "data": "U"} or {
        k: v for k, v in changes.items() if k != "data"
    } == {"a.txt": "-", "b.txt": "M", "c.txt": "+"}
    assert found["summary"]["added"] == 1 and found["summary"]["removed"] == 1
    assert (found["a"], found["b"]) == (older, newest)


@pytest.mark.parametrize("role", [r for r in ROLES if r != "agent"])
def test_any_reader_and_no_other_project(api: Api, points: list[dict[str, Any]], role: str) -> None:
    newest = points[0]["id"]
    with api.client("default", role) as client:
        assert client.get(f"/api/v1/restore-points/{newest}/files").status_code == 200
    with api.client("default", "agent") as client:  # an agent's token reads no points
        assert client.get(f"/api/v1/restore-points/{newest}/files").status_code == 403
    with api.client("beta", role) as client:
        assert client.get(f"/api/v1/restore-points/{newest}/files").status_code == 404
        diff = client.get(f"/api/v1/restore-points/{newest}/diff", params={"against": newest})
        assert diff.status_code == 404
    with api.client(None) as client:
        assert client.get(f"/api/v1/restore-points/{newest}/files").status_code == 401


def test_a_restore_of_some_paths_needs_a_new_target(api: Api, points: list[dict[str, Any]]) -> None:
    newest = points[0]["id"]
    path = str(api.folder / "data" / "b.txt")
    with api.client("default", "viewer") as client:
        refused = client.post(f"/api/v1/restore-points/{newest}/restore", json={"paths": [path]})
        assert refused.status_code == 403
    with api.client("default", "operator") as client:
        bad = client.post(f"/api/v1/restore-points/{newest}/restore", json={"paths": [path]})
        assert bad.status_code == 400 and "new target" in bad.json()["error"]["message"]
        ok = client.post(f"/api/v1/restore-points/{newest}/restore",
                         json={"paths": [path], "target": str(api.folder / "one")})  # fmt: skip
        assert ok.status_code == 202, ok.text
    with api.engine.connect() as db:
        params = db.execute(text("SELECT params FROM runs WHERE id = :id"),
                            {"id": ok.json()["run_id"]}).scalar_one()  # fmt: skip
    assert params["paths"] == [path]
