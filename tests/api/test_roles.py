"""Every route with every role, and with another project's token: what a role may not do
is 403, what another project holds is 404 (or absent from a list), never 403."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from safehold.api.tokens import create_token
from safehold.service.workers import register_worker
from tests.api.conftest import ROLES, SNAPSHOT, Api

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]

READ = {"admin", "operator", "viewer"}
OPERATE = {"admin", "operator"}
ADMIN = {"admin"}


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # {run}: a finished run, {queued}: a new queued run, {token}: a new token
    allowed: set[str]
    status: int
    body: dict[str, Any] | None = None
    # With another project's token: "404", "list" (200 without this project's objects), or
    # "own" (made in the token's own project).
    foreign: str = "404"


ROUTES = [
    Route("GET", "/api/v1/plans", READ, 200, foreign="list"),
    Route("GET", "/api/v1/plans/job", READ, 200),
    Route("GET", "/api/v1/plans/job/slots", READ, 200),
    Route("POST", "/api/v1/plans/job/pause", OPERATE, 200),
    Route("POST", "/api/v1/plans/job/resume", OPERATE, 200),
    Route("POST", "/api/v1/plans/second/run", OPERATE, 202),
    Route("GET", "/api/v1/runs", READ, 200, foreign="list"),
    Route("GET", "/api/v1/runs/{run}", READ, 200),
    Route("POST", "/api/v1/runs/{queued}/cancel", OPERATE, 200),
    Route("GET", "/api/v1/backup-jobs", READ, 200, foreign="list"),
    Route("GET", "/api/v1/backup-jobs/{run}", READ, 200),
    Route("POST", "/api/v1/backup-jobs", OPERATE, 202, body={"plan": "second"}),
    Route("POST", "/api/v1/backup-jobs/{queued}/cancel", OPERATE, 200),
    Route("GET", f"/api/v1/managed?backup_id={SNAPSHOT}", READ, 200, foreign="list"),
    Route("GET", "/api/v1/projects", READ, 200, foreign="list"),
    Route("GET", "/api/v1/projects/default", READ, 200),
    Route("GET", "/api/v1/tokens", ADMIN, 200, foreign="list"),
    Route(
        "POST", "/api/v1/tokens", ADMIN, 201, body={"role": "viewer", "name": "made"}, foreign="own"
    ),
    Route("POST", "/api/v1/tokens/{token}/revoke", ADMIN, 200),
]


def _path(api: Api, route: Route) -> str:
    path = route.path.replace("{run}", str(api.done_run))
    if "{queued}" in path:
        path = path.replace("{queued}", str(api.queued_run()))
    if "{token}" in path:
        victim = create_token(api.engine, project="default", role="viewer", name="victim")
        path = path.replace("{token}", victim.info.id)
    return path


def _ids(route: Route) -> str:
    return f"{route.method} {route.path}"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", ROUTES, ids=_ids)
def test_each_role_of_the_project(api: Api, route: Route, role: str) -> None:
    with api.client("default", role) as client:
        reply = client.request(route.method, _path(api, route), json=route.body)
    if role in route.allowed:
        assert reply.status_code == route.status, reply.text
    else:
        assert reply.status_code == 403, reply.text
        assert reply.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("route", ROUTES, ids=_ids)
def test_without_a_token_or_with_a_bad_one(api: Api, route: Route) -> None:
    with api.client(None) as client:
        missing = client.request(route.method, _path(api, route), json=route.body)
        wrong = client.request(
            route.method,
            _path(api, route),
            json=route.body,
            headers={"Authorization": "Bearer shk_0000000000000000_" + "A" * 43},
        )
    for reply in (missing, wrong):
        assert reply.status_code == 401, reply.text
        assert reply.json()["error"]["code"] == "unauthenticated"
        assert reply.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("route", ROUTES, ids=_ids)
def test_another_projects_token_sees_nothing(api: Api, route: Route) -> None:
    role = "admin" if route.allowed == ADMIN else "operator"
    with api.client("beta", role) as client:
        reply = client.request(route.method, _path(api, route), json=route.body)
    if route.foreign == "404":
        assert reply.status_code == 404, reply.text
        assert reply.json()["error"]["code"] == "not_found"
        return
    if route.foreign == "own":
        assert reply.status_code == route.status, reply.text
        assert reply.json()["project"] == "beta"
        return
    assert reply.status_code == 200, reply.text
    found = reply.json()
    if isinstance(found, dict) and "items" in found:
        found = found["items"]
    if isinstance(found, dict):  # managed
        assert found["managed"] is False
        return
    assert found, "the project's own objects are listed"
    for item in found:
        assert item.get("project", "beta") == "beta"
        assert item.get("name") not in ("job", "second", "default")
        assert item.get("plan") != "job"


def test_another_projects_run_cannot_be_cancelled_and_stays_queued(api: Api) -> None:
    queued = api.queued_run()
    with api.client("beta", "admin") as client:
        assert client.post(f"/api/v1/runs/{queued}/cancel").status_code == 404
        assert client.get(f"/api/v1/runs/{uuid.uuid4()}").status_code == 404
    with api.client("default", "viewer") as client:
        assert client.get(f"/api/v1/runs/{queued}").json()["state"] == "queued"


def test_a_job_is_found_under_its_own_kind_only(api: Api) -> None:
    with api.client("default", "operator") as client:
        assert client.get(f"/api/v1/backup-jobs/{api.done_run}").json()["kind"] == "backup"
        for call in ("GET", "POST"):
            path = f"/api/v1/restore-jobs/{api.done_run}" + ("/cancel" if call == "POST" else "")
            reply = client.request(call, path)
            assert reply.status_code == 404 and "restore job" in reply.text, reply.text
        queued = api.queued_run()
        assert client.post(f"/api/v1/restore-jobs/{queued}/cancel").status_code == 404
        assert client.get(f"/api/v1/runs/{queued}").json()["state"] == "queued"
        made = client.post("/api/v1/backup-jobs", json={"plan": "job"})
        assert made.status_code == 202 and made.json()["plan"] == "job"
        assert client.post("/api/v1/backup-jobs", json={"plan": "nope"}).status_code == 404


def test_the_services_processes_are_listed_for_any_reader(api: Api) -> None:
    register_worker(api.engine, "serve-test-1", "host-a", 4242)
    with api.client("beta", "viewer") as client:
        found = {w["name"]: w for w in client.get("/api/v1/workers").json()}
    assert found["serve-test-1"]["host"] == "host-a" and found["serve-test-1"]["pid"] == 4242
    assert found["serve-test-1"]["alive"] is True
    with api.client(None) as client:
        assert client.get("/api/v1/workers").status_code == 401
