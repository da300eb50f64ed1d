"""Restore points and restore jobs through the API: pages newest first, a plan's points,
holds by operators only, restore jobs queued under both names, and nothing of another
project, which is not found."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from tests.api.conftest import Api

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]


@pytest.fixture(scope="module")
def points(api: Api) -> dict[str, list[dict[str, Any]]]:
    """Three points of default/job (one chain: a full and two incrementals), one of
    beta/other; by project, newest first."""
    with api.engine.begin() as db:
        for project, plan, count in (("default", "job", 3), ("beta", "other", 1)):
            db.execute(
                text(
                    "INSERT INTO restore_points (plan_id, project, snapshot_id, taken_at, "
                    "  chain_id, chain_seq) "
                    "SELECT p.id, p.project, md5(p.name || i) || md5(i || p.name), "
                    "  timestamptz '2026-11-01' + i * interval '1 day', md5(p.name), i - 1 "
                    "FROM plans p, generate_series(1, :n) i "
                    "WHERE p.project = :project AND p.name = :plan"
                ),
                {"project": project, "plan": plan, "n": count},
            )
    out: dict[str, list[dict[str, Any]]] = {}
    for project in ("default", "beta"):
        with api.client(project, "viewer") as client:
            out[project] = client.get("/api/v1/restore-points").json()["items"]
    return out


def test_pages_and_a_plans_points(api: Api, points: dict[str, list[dict[str, Any]]]) -> None:
    mine = points["default"]
    assert [p["chain_seq"] for p in mine] == [2, 1, 0]  # newest first
    assert {p["full"] for p in mine} == {mine[-1]["snapshot_id"]}
    assert [p["plan"] for p in points["beta"]] == ["other"]
    with api.client("default", "viewer") as client:
        first = client.get("/api/v1/restore-points", params={"limit": 2}).json()
        rest = client.get(
            "/api/v1/restore-points", params={"limit": 2, "cursor": first["next_cursor"]}
        ).json()
        assert [p["id"] for p in first["items"] + rest["items"]] == [p["id"] for p in mine]
        assert rest["next_cursor"] is None
        by_plan = client.get("/api/v1/plans/job/restore-points").json()["items"]
        assert [p["id"] for p in by_plan] == [p["id"] for p in mine]
        one = client.get(f"/api/v1/restore-points/{mine[0]['snapshot_id'][:10]}").json()
        assert one["id"] == mine[0]["id"]
        # Another project's point and plan: not found, as if they did not exist.
        theirs = points["beta"][0]
        for path in (f"/api/v1/restore-points/{theirs['id']}",
                     f"/api/v1/restore-points/{theirs['snapshot_id']}",
                     "/api/v1/plans/other/restore-points"):  # fmt: skip
            reply = client.get(path)
            assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"
        assert client.get("/api/v1/restore-points", params={"cursor": "bogus"}).status_code == 400


def test_holds_are_for_operators_and_stay_in_the_project(
    api: Api, points: dict[str, list[dict[str, Any]]]
) -> None:
    point = points["default"][1]
    with api.client("default", "viewer") as client:
        assert client.post(f"/api/v1/restore-points/{point['id']}/hold").status_code == 403
    with api.client("beta", "operator") as client:
        assert client.post(f"/api/v1/restore-points/{point['id']}/hold").status_code == 404
    with api.client("default", "operator") as client:
        held = client.post(f"/api/v1/restore-points/{point['id']}/hold",
                           json={"reason": "legal hold"}).json()  # fmt: skip
        assert held["held"] and held["hold_reason"] == "legal hold"
        assert held["held_by"].startswith("token:")
        listed = client.get("/api/v1/restore-points", params={"held": True}).json()["items"]
        assert [p["id"] for p in listed] == [point["id"]]
        released = client.post(f"/api/v1/restore-points/{point['id']}/release").json()
        assert not released["held"] and released["held_by"] is None


def test_restore_jobs_under_both_names(api: Api, points: dict[str, list[dict[str, Any]]]) -> None:
    point = points["default"][0]
    with api.client("default", "viewer") as client:
        assert client.post(f"/api/v1/restore-points/{point['id']}/restore").status_code == 403
    with api.client("beta", "operator") as client:
        reply = client.post("/api/v1/restore-jobs", json={"restore_point": str(point["id"])})
        assert reply.status_code == 404
    with api.client("default", "operator") as client:
        one = client.post(f"/api/v1/restore-points/{point['id']}/restore",
                          json={"target": "/srv/copy"})  # fmt: skip
        job = {"restore_point": point["snapshot_id"][:12], "replace": True}
        two = client.post("/api/v1/restore-jobs", json=job)
        assert one.status_code == two.status_code == 202, (one.text, two.text)
        ids = {one.json()["run_id"], two.json()["run_id"]}
        runs = [client.get(f"/api/v1/runs/{run_id}").json() for run_id in ids]
        assert {(r["kind"], r["state"]) for r in runs} == {("restore", "queued")}
        listed = client.get("/api/v1/restore-jobs").json()["items"]
        assert ids <= {r["id"] for r in listed} and {r["kind"] for r in listed} == {"restore"}
        backups = client.get("/api/v1/backup-jobs").json()["items"]
        assert backups and {r["kind"] for r in backups} == {"backup"}
        bad = client.post("/api/v1/restore-jobs", json={"restore_point": "zz"})
        assert bad.status_code == 422


def test_deleting_a_point_queues_its_forget_unless_held(
    api: Api, points: dict[str, list[dict[str, Any]]]
) -> None:
    point = points["default"][2]
    with api.client("default", "operator") as client:
        assert client.delete(f"/api/v1/restore-points/{point['id']}").status_code == 403
        client.post(f"/api/v1/restore-points/{point['id']}/hold", json={"reason": "audit"})
    with api.client("beta", "admin") as client:
        assert client.delete(f"/api/v1/restore-points/{point['id']}").status_code == 404
    with api.client("default", "admin") as client:
        held = client.delete(f"/api/v1/restore-points/{point['id']}")
        assert held.status_code == 409 and "audit" in held.json()["error"]["message"]
        client.post(f"/api/v1/restore-points/{point['id']}/release")
        queued = client.delete(f"/api/v1/restore-points/{point['id']}")
        assert queued.status_code == 202, queued.text
        run = client.get(f"/api/v1/runs/{queued.json()['run_id']}").json()
        assert (run["kind"], run["state"]) == ("retention", "queued")
    with api.engine.connect() as db:
        params = db.execute(
            text("SELECT params FROM runs WHERE id = :r"), {"r": queued.json()["run_id"]}
        ).scalar_one()
    assert params == {"snapshots": [point["snapshot_id"]]}
