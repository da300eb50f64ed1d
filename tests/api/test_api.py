"""What the API does beyond roles: the error shape, health and readiness, tokens shown
once and stored hashed, run now and cancel through the real queue, pages, staffeln's
check, the body size limit and the limit on failed token checks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, text

from safehold.api.app import create_app
from safehold.api.auth import FailureLimiter
from safehold.catalog import migrate
from safehold.errors import SafeholdError
from safehold.service.cluster import Cluster
from tests.api.conftest import SNAPSHOT, Api, insert_run
from tests.servers.private_cluster import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]


def error(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "hint"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def test_errors_have_one_shape(api: Api) -> None:
    with api.client("default", "admin") as client:
        error(client.get("/api/v1/nowhere"), 404, "not_found")
        error(client.delete("/api/v1/plans"), 405, "method_not_allowed")
        error(client.get("/api/v1/plans/nothing"), 404, "not_found")
        error(client.get("/api/v1/runs/not-a-uuid"), 422, "invalid_request")
        error(client.get("/api/v1/runs", params={"limit": 501}), 422, "invalid_request")
        error(client.get("/api/v1/runs", params={"state": "done"}), 422, "invalid_request")
        error(client.get("/api/v1/runs", params={"cursor": "garbage"}), 400, "usage_error")
        error(client.post(f"/api/v1/runs/{api.done_run}/cancel"), 409, "conflict")
        error(client.post("/api/v1/tokens", json={"role": "king"}), 422, "invalid_request")
        big = client.post("/api/v1/tokens", content=b"x" * (65 * 1024),
                          headers={"content-type": "application/json"})  # fmt: skip
        error(big, 413, "request_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted
            for _ in range(65):
                yield b"x" * 1024

        streamed = client.post("/api/v1/tokens", content=chunks(),
                               headers={"content-type": "application/json"})  # fmt: skip
        error(streamed, 413, "request_too_large")


def test_error_codes_are_stable() -> None:
    """A client acts on the codes: renaming an error class changes one, on purpose only."""
    from safehold.api.errors import error_code
    from safehold.errors import Conflict, DatabaseUnreachable, NotFound, TooManyRequests

    assert [error_code(c) for c in (NotFound, Conflict, TooManyRequests, DatabaseUnreachable,
                                    SafeholdError)] == [
        "not_found", "conflict", "too_many_requests", "database_unreachable", "safehold_error",
    ]  # fmt: skip


def test_health_and_readiness(api: Api, private_cluster: Cluster) -> None:
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz")
    assert ready.status_code == 200 and ready.json()["catalog_revision"] == migrate.head()

    async def ask(app: Any, path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get(path)

    # A catalog one migration behind: not ready.
    behind = fresh_database(private_cluster, "api_behind")
    try:
        with behind.begin() as db:
            migrate.upgrade(db, "0002")
        reply = asyncio.run(ask(create_app(behind), "/readyz"))
        assert "0002" in error(reply, 503, "database_error")["message"]
    finally:
        behind.dispose()
    # No database at all: not ready, and nothing of the server's address in the reply.
    gone = create_engine("postgresql+psycopg://nobody@/none?host=/nonexistent&connect_timeout=2")
    reply = asyncio.run(ask(create_app(gone), "/readyz"))
    assert "nonexistent" not in error(reply, 503, "database_unreachable")["message"]
    assert asyncio.run(ask(create_app(gone), "/healthz")).status_code == 200


def test_a_token_is_shown_once_and_stored_hashed(api: Api) -> None:
    with api.client("default", "admin") as client:
        made = client.post("/api/v1/tokens", json={"role": "viewer", "name": "once"})
        assert made.status_code == 201
        token = made.json()["token"]
        token_id, secret = token.split("_")[1], token.split("_", 2)[2]
        listed = client.get("/api/v1/tokens").text
        assert token_id in listed and secret not in listed and 'token"' not in listed
    with api.client(None) as client:
        mine = client.get("/api/v1/plans", headers={"Authorization": f"Bearer {token}"})
        assert mine.status_code == 200
    # Nowhere in the database, in any table's any column.
    with psycopg.connect(api.conninfo) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )]  # fmt: skip
        for table in tables:
            found = conn.execute(
                f"SELECT count(*) FROM {table} t WHERE t::text LIKE %s", (f"%{secret}%",)
            ).fetchone()
            assert found == (0,), table
        used = conn.execute(
            "SELECT last_used_at IS NOT NULL FROM tokens WHERE id = %s", (token_id,)
        ).fetchone()
        assert used == (True,)
    # Revoked: it stops working at once.
    with api.client("default", "admin") as client:
        assert client.post(f"/api/v1/tokens/{token_id}/revoke").json()["revoked_at"]
    with api.client(None) as client:
        gone = client.get("/api/v1/plans", headers={"Authorization": f"Bearer {token}"})
        error(gone, 401, "unauthenticated")


def test_run_now_queues_a_job_and_cancel_takes_it_back(api: Api) -> None:
    with api.client("default", "operator") as client:
        queued = client.post("/api/v1/plans/job/run")
        assert queued.status_code == 202
        run_id = queued.json()["run_id"]
        with psycopg.connect(api.conninfo) as conn:
            job = conn.execute(
                "SELECT j.status, j.lock FROM runs r JOIN procrastinate_jobs j ON j.id = r.job_id "
                "WHERE r.id = %s",
                (run_id,),
            ).fetchone()
        assert job == ("todo", "default/job")
        cancelled = client.post(f"/api/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        with psycopg.connect(api.conninfo) as conn:
            status = conn.execute(
                "SELECT j.status FROM runs r JOIN procrastinate_jobs j ON j.id = r.job_id "
                "WHERE r.id = %s",
                (run_id,),
            ).fetchone()
        assert status == ("cancelled",)
        error(client.post(f"/api/v1/runs/{run_id}/cancel"), 409, "conflict")
        # A running run (without a job here: tests/e2e/test_serve_api.py aborts a real one).
        running = insert_run(api.engine, "default/job", state="running")
        assert client.post(f"/api/v1/runs/{running}/cancel").json()["state"] == "cancelled"


def test_pause_and_resume(api: Api) -> None:
    with api.client("default", "operator") as client:
        assert client.post("/api/v1/plans/second/pause").json()["paused"] is True
        assert client.get("/api/v1/plans/second").json()["next_slot"] is None
        with api.engine.connect() as db:
            paused = db.execute(
                text("SELECT paused FROM plans WHERE project = 'default' AND name = 'second'")
            ).scalar_one()
        assert paused is True
        resumed = client.post("/api/v1/plans/second/resume").json()
        assert resumed["paused"] is False and resumed["next_slot"] is not None
        assert resumed["read_only"] is True and resumed["origin"] == "file"


def test_runs_come_in_pages_newest_first_with_filters(api: Api) -> None:
    made = {insert_run(api.engine, "default/second", state="failed") for _ in range(7)}
    with api.client("default", "viewer") as client:
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"plan": "second", "state": "failed", "limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/api/v1/runs", params=params).json()
            seen += [item["id"] for item in page["items"]]
            assert len(page["items"]) <= 3
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert set(seen) == {str(r) for r in made} and len(seen) == 7
        everything = client.get("/api/v1/runs", params={"limit": 500}).json()["items"]
        keys = [(item["queued_at"], item["id"]) for item in everything]
        assert keys == sorted(keys, reverse=True)
        kinds = client.get("/api/v1/runs", params={"kind": "prune"}).json()
        assert kinds == {"items": [], "next_cursor": None}
        detail = client.get(f"/api/v1/runs/{api.done_run}").json()
        assert detail["lines"][0]["message"] == "run.started" and detail["phases"] == []


def test_the_ledger_of_a_plan(api: Api) -> None:
    with api.client("default", "viewer") as client:
        page = client.get("/api/v1/plans/job/slots", params={"limit": 1}).json()
        assert [slot["state"] for slot in page["items"]] == ["succeeded"]
        assert page["next_cursor"] is None


def test_staffeln_check(api: Api) -> None:
    with api.client(None) as client:
        # staffeln's form: True when safehold does not manage it (the delete may go on).
        assert client.post("/v1/backup", params={"backup_id": SNAPSHOT}).text == "False"
        assert client.post("/v1/backup", params={"backup_id": str(api.done_run)}).text == "False"
        assert client.post("/v1/backup", params={"backup_id": "cd" * 32}).text == "True"
        error(client.post("/v1/backup"), 422, "invalid_request")
    with api.client("default", "viewer") as client:
        found = client.get("/api/v1/managed", params={"backup_id": SNAPSHOT}).json()
        assert found == {"backup_id": SNAPSHOT, "managed": True, "run_id": str(api.done_run),
                         "plan": "job"}  # fmt: skip


def test_failed_token_checks_are_limited_per_address(api: Api) -> None:
    app = create_app(api.engine, limiter=FailureLimiter(limit=3, window=60))

    async def go() -> list[httpx.Response]:
        replies = []
        for client_address in ("10.0.0.1", "10.0.0.2"):
            transport = httpx.ASGITransport(app=app, client=(client_address, 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                bad = {"Authorization": "Bearer shk_0000000000000000_" + "B" * 43}
                good = {"Authorization": f"Bearer {api.tokens['default', 'viewer']}"}
                for _ in range(3):
                    replies.append(await client.get("/api/v1/projects", headers=bad))
                replies.append(await client.get("/api/v1/projects", headers=good))
                if client_address == "10.0.0.1":
                    continue
                replies.append(await client.get("/healthz"))
        return replies

    replies = asyncio.run(go())
    assert [r.status_code for r in replies[:4]] == [401, 401, 401, 429]
    assert 0 < int(replies[3].headers["retry-after"]) <= 60
    error(replies[3], 429, "too_many_requests")
    # Another address is not affected until it fails itself; health needs no token.
    assert [r.status_code for r in replies[4:]] == [401, 401, 401, 429, 200]
