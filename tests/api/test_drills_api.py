"""Drills through the API: any role of the project reads them, newest first with their
trend; another project's are not there, and an unknown plan is not found."""

from __future__ import annotations

import pytest
from sqlalchemy import text

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
