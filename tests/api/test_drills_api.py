"""Drills through the API: any role of the project reads them, newest first with their
trend; another project's are not there, and an unknown plan is not found."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from safehold.api.tokens import create_token
from safehold.catalog import RunKind
from safehold.policy.schedule import parse_schedule
from safehold.service.plans import PlanSpec, sync_plans
from tests.api.conftest import Api

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]


def test_drills_are_read_per_project_with_their_trend(api: Api) -> None:
    with api.engine.begin() as db:
        for project, plan, seconds, result, phase in (
            ("default", "job", 30.0, "passed", None),
            ("default", "job", 20.0, "passed", None),
            ("default", "job", None, "failed", "check"),
            ("beta", "other", 5.0, "passed", None),
        ):
            db.execute(
                text(
                    "INSERT INTO drills (project, plan, snapshot_id, started_at, finished_at, "
                    "restore_seconds, rto_target_seconds, bytes, result, failed_phase, "
                    "check_output) VALUES (:p, :n, 'ab', now() + (SELECT count(*) FROM drills) "
                    "* interval '1 minute', now(), :s, 25, 100, :r, :f, 'out')"
                ),
                {"p": project, "n": plan, "s": seconds, "r": result, "f": phase},
            )
    for role in ("viewer", "operator", "admin"):
        with api.client("default", role) as client:
            got = client.get("/api/v1/drills")
            assert got.status_code == 200, got.text
            items = got.json()["items"]
            assert [(i["result"], i["restore_seconds"]) for i in items] == [
                ("failed", None), ("passed", 20.0), ("passed", 30.0)
            ]  # fmt: skip
            assert items[0]["failed_phase"] == "check" and items[0]["rtos"] == [20.0, 30.0]
            assert items[1]["trend"] == "better" and items[1]["over_target"] is False
            assert items[2]["over_target"] is True and items[2]["trend"] is None
            by_plan = client.get("/api/v1/plans/job/drills").json()["items"]
            assert [i["id"] for i in by_plan] == [i["id"] for i in items]
            assert client.get("/api/v1/plans/job.drill/drills").status_code == 200
            assert client.get("/api/v1/plans/other/drills").status_code == 404
            assert client.get("/api/v1/drills", params={"plan": "second"}).json()["items"] == []
    with api.client("beta", "viewer") as client:
        assert [i["plan"] for i in client.get("/api/v1/drills").json()["items"]] == ["other"]
    with api.client(None) as client:
        assert client.get("/api/v1/drills").status_code == 401


def test_an_agents_drill_job_names_the_point_and_its_end_is_recorded(api: Api) -> None:
    """A drill plan bound to an agent: its job goes to the agent with the point the
    service chose, and the agent's report of the end becomes the drill's row."""
    spec = PlanSpec(
        project="default",
        name="second.drill",
        config_path=str(api.folder / "safehold.yaml"),
        schedule=parse_schedule("@weekly", key="default/second.drill", timezone="UTC"),
        agent="vm-drill",
        kind=RunKind.DRILL,
    )
    api.specs[spec.key] = spec
    try:
        sync_plans(api.engine, [spec])
        with api.engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO restore_points (plan_id, project, snapshot_id, taken_at, "
                    "chain_id, chain_seq) SELECT id, project, :s, :t, 'c1', 0 FROM plans "
                    "WHERE project = 'default' AND name = 'second'"
                ),
                [{"s": "1" * 64, "t": "2026-11-01"}, {"s": "2" * 64, "t": "2026-11-02"}],
            )
        token = create_token(api.engine, project="default", role="agent", name="vm-drill").token
        headers = {"Authorization": f"Bearer {token}"}
        with api.client("default", "operator") as client:
            queued = client.post("/api/v1/plans/second.drill/run")
            assert queued.status_code == 202, queued.text
        with api.client(None) as client:
            made = client.post("/api/v1/agent/register", headers=headers, json={"name": "vm-drill"})
            assert made.status_code == 200, made.text
            got = client.get("/api/v1/agent/jobs/next?wait=10", headers=headers)
            assert got.status_code == 200, got.text
            job = got.json()
            assert (job["kind"], job["source"]) == ("drill", "second")
            assert job["params"]["snapshot"] == "2" * 64  # latest: the newest point
            record = {
                "operation": "drill", "outcome": "success", "snapshot": "2" * 64,
                "started": "2026-12-01T00:00:00+00:00", "finished": "2026-12-01T00:01:00+00:00",
                "restore_seconds": 42.0, "rto_target_seconds": 60.0, "bytes": 10,
                "result": "passed", "check_output": "ok", "phases": [],
            }  # fmt: skip
            ended = client.post(f"/api/v1/agent/runs/{job['run_id']}/end", headers=headers,
                                json={"exit_code": 0, "record": record})  # fmt: skip
            assert ended.status_code == 200 and ended.json()["recorded"], ended.text
        with api.client("default", "viewer") as client:
            [drill] = client.get("/api/v1/plans/second/drills").json()["items"]
        assert drill["run_id"] == job["run_id"] and drill["restore_seconds"] == 42.0
        assert drill["result"] == "passed" and drill["snapshot_id"] == "2" * 64
    finally:
        del api.specs[spec.key]
