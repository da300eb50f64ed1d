"""The agents' routes: only an agent token may use them, an unregistered agent is told to
register, a name belongs to the first token that registers it, an agent reaches no run it
did not claim, and the agents' list is per project."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from safehold.api.routes.agent import _secure
from safehold.api.tokens import create_token
from tests.api.conftest import Api

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api_database")]

NOBODY = "00000000-0000-4000-8000-000000000000"  # a run id no agent claimed (stable: test ids)
AGENT_ROUTES = [
    ("POST", "/api/v1/agent/register", {"name": "vm-roles"}),
    ("POST", "/api/v1/agent/heartbeat", None),
    ("POST", "/api/v1/agent/stop", None),
    ("GET", "/api/v1/agent/jobs/next?wait=0", None),
    ("POST", f"/api/v1/agent/runs/{NOBODY}/lines", {"lines": []}),
    ("POST", f"/api/v1/agent/runs/{NOBODY}/end", {"exit_code": 0}),
]


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
@pytest.mark.parametrize(("method", "path", "body"), AGENT_ROUTES)
def test_only_an_agent_token_may_act_as_an_agent(
    api: Api, role: str, method: str, path: str, body: object
) -> None:
    with api.client("default", role) as client:
        reply = client.request(method, path, json=body)
    assert reply.status_code == 403, reply.text
    assert reply.json()["error"]["code"] == "forbidden"


def test_an_agent_registers_beats_polls_and_sees_only_its_runs(api: Api) -> None:
    token = create_token(api.engine, project="default", role="agent", name="vm-a").token
    other = create_token(api.engine, project="default", role="agent", name="vm-b").token
    headers = {"Authorization": f"Bearer {token}"}
    with api.client(None) as client:
        before = client.post("/api/v1/agent/heartbeat", headers=headers)
        assert before.status_code == 404 and "register" in before.json()["error"]["hint"]
        made = client.post("/api/v1/agent/register", headers=headers, json={"name": "vm-a"})
        assert made.status_code == 200, made.text
        assert made.json() == {"name": "vm-a", "project": "default", "heartbeat_every": 5.0}
        beat = client.post("/api/v1/agent/heartbeat", headers=headers)
        assert beat.status_code == 200 and beat.json() == {"abort": []}
        # No plan is bound to it: the long poll answers "no job" after its wait.
        assert client.get("/api/v1/agent/jobs/next?wait=0.2", headers=headers).status_code == 204
        too_long = client.get("/api/v1/agent/jobs/next?wait=3600", headers=headers)
        assert too_long.status_code == 422
        # A run it did not claim (another's, or the project's finished one) is not found.
        for call in ("lines", "end"):
            body = {"lines": []} if call == "lines" else {"exit_code": 0}
            reply = client.post(f"/api/v1/agent/runs/{api.done_run}/{call}", headers=headers,
                                json=body)  # fmt: skip
            assert reply.status_code == 404, reply.text
        # Its name belongs to its token; its token cannot take a second name.
        taken = client.post("/api/v1/agent/register", json={"name": "vm-a"},
                            headers={"Authorization": f"Bearer {other}"})  # fmt: skip
        assert taken.status_code == 409
        second = client.post("/api/v1/agent/register", headers=headers, json={"name": "vm-c"})
        assert second.status_code == 409
        bad = client.post("/api/v1/agent/register", headers=headers, json={"name": "../x"})
        assert bad.status_code == 422
    with api.client("default", "viewer") as client:
        listed = {a["name"]: a for a in client.get("/api/v1/agents").json()}
    assert listed["vm-a"]["status"] == "online" and listed["vm-a"]["running"] == 0
    with api.client("beta", "viewer") as client:
        assert client.get("/api/v1/agents").json() == []
    with api.client(None) as client:
        assert client.post("/api/v1/agent/stop", headers=headers).status_code == 204
    with api.client("default", "viewer") as client:
        listed = {a["name"]: a for a in client.get("/api/v1/agents").json()}
    assert listed["vm-a"]["status"] == "stopped"


@pytest.mark.parametrize(
    ("scheme", "host", "secure"),
    [("https", "203.0.113.9", True), ("http", "127.0.0.1", True), ("http", "::1", True),
     ("http", "203.0.113.9", False), ("http", "testclient", False)],
)  # fmt: skip
def test_credentials_go_only_over_tls_or_loopback(scheme: str, host: str, secure: bool) -> None:
    scope = {"type": "http", "scheme": scheme, "client": (host, 5000), "server": ("x", 80),
             "path": "/", "headers": [], "query_string": b""}  # fmt: skip
    assert _secure(Request(scope)) is secure
