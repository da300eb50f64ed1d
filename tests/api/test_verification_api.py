"""``GET /api/v1/repositories/verification`` on the real API: a repository's coverage from
its rotation, to every role of a project that writes to it, and to nobody else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from safehold.catalog import RunKind
from safehold.policy.schedule import parse_schedule
from safehold.service.plans import VERIFY_PROJECT, PlanSpec
from tests.api.conftest import Api

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("catalog_cluster")]

URL = "/api/v1/repositories/verification"


@pytest.fixture(scope="module")
def verified(api: Api) -> str:
    """A verify plan for the file's repository (its first slice done: two packs of three
    read, one of them long ago), and one for a repository no project writes to."""
    repo = next(spec.repository for spec in api.specs.values())
    for location in (repo, "/elsewhere/repo"):
        spec = PlanSpec(
            project=VERIFY_PROJECT, name=location, config_path="x",
            schedule=parse_schedule("@daily", key="v"), repository=location,
            kind=RunKind.VERIFY, verify_period="30d",
        )  # fmt: skip
        api.specs[spec.key] = spec
    now = datetime.now(UTC)
    rows = [
        (repo, "a" * 64, 100, now - timedelta(days=1), "ok"),
        (repo, "b" * 64, 300, now - timedelta(days=40), "ok"),
        (repo, "c" * 64, 600, None, None),
        ("/elsewhere/repo", "d" * 64, 50, now, "ok"),
    ]
    with api.engine.begin() as db:
        for repository, pack, size, read, result in rows:
            db.execute(
                text(
                    "INSERT INTO verify_packs VALUES (:repo, :pack, :size, :seen, :read, :res)"
                ),
                {"repo": repository, "pack": pack, "size": size, "seen": now,
                 "read": read, "res": result},
            )  # fmt: skip
    return repo


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
def test_the_coverage_of_the_project_s_repository(api: Api, verified: str, role: str) -> None:
    with api.client("default", role) as client:
        res = client.get(URL)
    assert res.status_code == 200, res.text
    (found,) = res.json()
    assert found["repository"] == verified and found["period"] == "30d"
    assert (found["packs"], found["bytes_total"], found["bytes_read_within_period"]) == (
        3, 1000, 100,
    )  # fmt: skip
    assert found["coverage"] == pytest.approx(0.1)
    assert (found["never_read"], found["damaged_packs"]) == (1, 0)
    assert found["oldest_read"] is not None


def test_no_token_no_coverage(api: Api, verified: str) -> None:
    with api.client(None) as client:
        assert client.get(URL).status_code == 401
    with api.client("default", "agent") as client:
        assert client.get(URL).status_code == 403
