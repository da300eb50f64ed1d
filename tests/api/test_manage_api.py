"""Destinations and plans made through the API: admins only, credentials sealed and
never returned, the configuration file's plans read-only (409), errors that name the key,
another project's objects not found."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from tests.api.conftest import Api

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]

SECRET = "dest-password-Xq7"


def everything(api: Api) -> str:
    """Every text and JSON column of the catalog's tables, as one string."""
    with api.engine.connect() as db:
        tables = db.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )).scalars().all()  # fmt: skip
        return "\n".join(
            str(row) for table in tables for row in db.execute(text(f'SELECT * FROM "{table}"'))
        )


def test_destinations_and_plans_through_the_api(api: Api) -> None:
    data = api.folder / "data"
    destination = {"name": "bucket", "location": str(api.folder / "made-repo"),
                   "password": SECRET}  # fmt: skip
    plan: dict[str, Any] = {"name": "made", "repository": "bucket", "type": "directory",
                            "paths": [str(data)], "schedule": "@daily"}  # fmt: skip
    with api.client("default", "operator") as client:
        assert client.post("/api/v1/destinations", json=destination).status_code == 403
        assert client.post("/api/v1/plans", json=plan).status_code == 403
    with api.client("default", "admin") as client:
        made = client.post("/api/v1/destinations", json=destination)
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "bucket" and SECRET not in made.text
        again = client.post("/api/v1/destinations", json=destination)
        assert again.status_code == 409
        listed = client.get("/api/v1/destinations")
        assert [d["name"] for d in listed.json()] == ["bucket"] and SECRET not in listed.text
        # OSB's name for them: the same objects.
        assert client.get("/api/v1/endpoints").json() == listed.json()
        assert client.get("/api/v1/endpoints/bucket").json()["name"] == "bucket"
        bad = client.post("/api/v1/destinations", json={"name": "x", "password": SECRET})
        assert bad.status_code == 422 and SECRET not in bad.text

        created = client.post("/api/v1/plans", json=plan)
        assert created.status_code == 201, created.text
        shown = created.json()
        assert (shown["origin"], shown["repository"]) == ("api", "bucket")
        assert shown["source"]["paths"] == [str(data)]
        assert client.get("/api/v1/plans/made/definition").json()["schedule"] == "@daily"
        changed = client.put("/api/v1/plans/made", json={**plan, "schedule": "@hourly"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["schedule"] == "@hourly"
        wrong = client.post("/api/v1/plans", json={**plan, "name": "typo", "pahts": ["/x"]})
        assert wrong.status_code == 400 and "pahts" in wrong.json()["error"]["message"]
        # The configuration file's plans are read-only here.
        for reply in (client.post("/api/v1/plans", json={**plan, "name": "job"}),
                      client.put("/api/v1/plans/job", json={**plan, "name": "job"}),
                      client.delete("/api/v1/plans/job")):  # fmt: skip
            assert reply.status_code == 409, reply.text
        # A destination in use is not deleted; its plan first, then it.
        in_use = client.delete("/api/v1/destinations/bucket")
        assert in_use.status_code == 409 and "made" in in_use.text
    with api.client("beta", "admin") as client:
        assert client.get("/api/v1/destinations/bucket").status_code == 404
        assert client.get("/api/v1/endpoints/bucket").status_code == 404
        assert client.delete("/api/v1/plans/made").status_code == 404
    assert SECRET not in everything(api)
    with api.client("default", "admin") as client:
        assert client.delete("/api/v1/plans/made").status_code == 204
        assert client.delete("/api/v1/endpoints/bucket").status_code == 204
        assert client.get("/api/v1/destinations").json() == []


def test_a_nul_in_a_block_is_refused_before_the_catalog(api: Api) -> None:
    with api.client("default", "admin") as client:
        reply = client.post("/api/v1/plans", json={
            "name": "nul", "repository": "bucket", "type": "directory",
            "schedule": "@daily", "paths": ["/tmp/a\x00b"],
        })  # fmt: skip
    assert reply.status_code == 422
