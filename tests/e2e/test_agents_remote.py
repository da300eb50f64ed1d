"""Agents that work for a service (``safehold agent --server``), as real processes on
separate state folders against a real ``safehold serve``: each plan's jobs go to the agent
bound to it only; an agent killed mid-run has its run ended as "agent lost" and retried
when it comes back; an agent's token reaches nothing but its own runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.e2e.waiting import wait_for
from tests.notify_receivers import HttpReceiver, http_receiver

__all__ = ["http_receiver"]  # a fixture

pytestmark = pytest.mark.slow


class Site:
    """A service and its agents, all on this machine, each with its own state folder."""

    def __init__(self, tmp: Path, make_state_dir: Callable[[], Path]) -> None:
        self.tmp = tmp
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
        self.env.update(REPO_PW=PASSWORD.decode(), HOME=str(tmp / "home"),
                        SAFEHOLD_CACHE_DIR=str(tmp / "cache"))  # fmt: skip
        (tmp / "data").mkdir()
        (tmp / "data" / "file").write_text("some data\n")
        self.hold = tmp / "hold"  # while it exists, plan a's hook waits
        hook = tmp / "wait.sh"
        hook.write_text(
            f"#!/bin/sh\necho started > {tmp / 'hook.started'}\n"
            f"while [ -e {self.hold} ]; do sleep 0.2; done\n"
        )
        hook.chmod(0o755)
        self.config = tmp / "safehold.yaml"
        source = f"type: directory, paths: [{tmp / 'data'}], schedule: '@yearly'"
        self.config.write_text(
            f"repository: {{location: {tmp / 'repo'}, password_env: REPO_PW}}\n"
            f"service: {{state_dir: {make_state_dir()}}}\n"
            "sources:\n"
            f"  a: {{{source}, agent: vm1, retries: 1, retry_delay: 1s,"
            f" hooks: {{pre-backup-lock: {hook}}}}}\n"
            f"  b: {{{source}, agent: vm2}}\n"
            f"  c: {{{source}}}\n"
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ""

    def safehold(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "safehold", *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    def token(self, role: str, name: str) -> str:
        made = self.safehold("token", "create", "--config", str(self.config), "--project",
                             "default", "--role", role, "--name", name)  # fmt: skip
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    def start(self, name: str, argv: list[str]) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "safehold", *argv], env=self.env, stdout=log, stderr=log
        )

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def start_serve(self) -> None:
        self.start("serve", ["serve", "--config", str(self.config), "--workers", "1",
                             "--tick", "0.5", "--listen", "127.0.0.1:0"])  # fmt: skip
        found: list[str] = []

        def listening() -> bool:
            assert self.procs["serve"].poll() is None, self.log("serve")
            found[:] = re.findall(r"API listening on (http://127\.0\.0\.1:\d+)", self.log("serve"))
            return bool(found)

        wait_for("the API to listen", listening, timeout=90)
        self.url = found[0]

    def start_agent(self, name: str, token: str) -> None:
        token_file = self.tmp / f"{name}.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        self.start(name, ["agent", "--server", self.url, "--token-file", str(token_file),
                          "--name", name, "--config", str(self.config),
                          "--state-dir", str(self.tmp / f"state-{name}")])  # fmt: skip

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def site(make_state_dir: Callable[[], Path], tmp_path: Path) -> Iterator[Site]:
    found = Site(tmp_path, make_state_dir)
    init = found.safehold("-r", str(tmp_path / "repo"), "init", "--kdf-log2n", "10",
                          SAFEHOLD_PASSWORD=PASSWORD.decode())  # fmt: skip
    assert init.returncode == 0, init.stderr
    try:
        yield found
    finally:
        found.stop_all()


def ended(client: httpx.Client, run_id: str) -> dict[str, Any] | None:
    run: dict[str, Any] = client.get(f"/api/v1/runs/{run_id}").json()
    return run if run["state"] not in ("queued", "running") else None


def test_agents_take_their_own_jobs_and_a_lost_one_is_run_again(
    site: Site, http_receiver: HttpReceiver
) -> None:
    # b's pings (healthchecks style): its start at vm2's claim, its end at vm2's report.
    hc = f"{http_receiver.base}/ping/b-0d7a4b8e9c3a1234"
    pings = f"{{start: '{hc}/start', success: '{hc}', fail: '{hc}/fail'}}"
    site.config.write_text(
        site.config.read_text().replace("agent: vm2}", f"agent: vm2, ping: {pings}}}")
    )
    operator = site.token("operator", "ops")
    tokens = {name: site.token("agent", name) for name in ("vm1", "vm2")}
    site.start_serve()
    for name, token in tokens.items():
        site.start_agent(name, token)
    auth = {"Authorization": f"Bearer {operator}"}
    with httpx.Client(base_url=site.url, headers=auth, timeout=60) as client:
        wait_for("both agents online", lambda: sorted(
            a["name"] for a in client.get("/api/v1/agents").json() if a["status"] == "online"
        ) == ["vm1", "vm2"], timeout=60)  # fmt: skip

        # Each plan's run goes where it is bound: b to vm2, c to the service's worker.
        runs = {plan: client.post(f"/api/v1/plans/{plan}/run").json()["run_id"]
                for plan in ("b", "c")}  # fmt: skip
        wait_for("b and c to end", lambda: all(ended(client, r) for r in runs.values()))
        done = {plan: ended(client, run_id) for plan, run_id in runs.items()}
        assert done["b"] is not None and done["c"] is not None
        assert done["b"]["state"] == "succeeded" and done["b"]["worker"] == "agent:default/vm2"
        assert done["c"]["state"] == "succeeded" and not done["c"]["worker"].startswith("agent:")
        assert done["b"]["snapshot_id"]
        detail = client.get(f"/api/v1/runs/{runs['b']}").json()
        assert any(line["message"].startswith("run.finished") for line in detail["lines"])
        wait_for("b's pings", lambda: len(http_receiver.requests) >= 2)
        assert http_receiver.paths() == ["/ping/b-0d7a4b8e9c3a1234/start",
                                         "/ping/b-0d7a4b8e9c3a1234"]  # fmt: skip

        # An agent's token: none of the operator's routes, and not another agent's runs.
        with httpx.Client(base_url=site.url, timeout=30,
                          headers={"Authorization": f"Bearer {tokens['vm1']}"}) as vm1:  # fmt: skip
            assert vm1.get("/api/v1/runs").status_code == 403
            assert vm1.post(f"/api/v1/agent/runs/{runs['b']}/lines",
                            json={"lines": [{"message": "forged"}]}).status_code == 404  # fmt: skip
            assert vm1.post(f"/api/v1/agent/runs/{runs['b']}/end",
                            json={"exit_code": 0}).status_code == 404  # fmt: skip
            taken = vm1.post("/api/v1/agent/register", json={"name": "vm2"})
            assert taken.status_code == 409 and taken.json()["error"]["code"] == "conflict"

        # vm1 is killed while it runs a's backup (its hook waits): when it comes back, the
        # run is ended as lost and its retry runs on vm1.
        site.hold.write_text("")
        first = client.post("/api/v1/plans/a/run").json()["run_id"]
        wait_for("a's hook to start", (site.tmp / "hook.started").exists, timeout=60)
        assert client.get(f"/api/v1/runs/{first}").json()["worker"] == "agent:default/vm1"
        site.procs["vm1"].kill()
        site.procs["vm1"].wait()
        site.hold.unlink()
        site.start_agent("vm1", tokens["vm1"])
        wait_for("the lost run to end", lambda: ended(client, first) is not None, timeout=90)
        lost = ended(client, first)
        assert lost is not None and lost["state"] == "worker_lost"
        assert lost["error"].startswith("agent lost")

        def retried() -> dict[str, Any] | None:
            found = [r for r in client.get("/api/v1/runs", params={"plan": "a"}).json()["items"]
                     if r["id"] != first]  # fmt: skip
            return ended(client, found[0]["id"]) if found else None

        wait_for("the retry to end", lambda: retried() is not None, timeout=120)
        again = retried()
        assert again is not None, site.log("vm1")
        assert (again["state"], again["attempt"], again["worker"]) == (
            "succeeded",
            2,
            "agent:default/vm1",
        ), site.log("vm1")
    assert operator not in site.log("serve") and tokens["vm1"] not in site.log("vm1")


def test_a_plan_made_through_the_api_runs_on_its_agent_with_credentials_in_memory(
    site: Site,
) -> None:
    secret = "api-repo-password-" + "x" * 12
    made = site.safehold("-r", str(site.tmp / "api-repo"), "init", "--kdf-log2n", "10",
                         SAFEHOLD_PASSWORD=secret)  # fmt: skip
    assert made.returncode == 0, made.stderr
    admin = site.token("admin", "boss")
    vm2 = site.token("agent", "vm2")
    site.start_serve()
    site.start_agent("vm2", vm2)
    with httpx.Client(base_url=site.url, timeout=60,
                      headers={"Authorization": f"Bearer {admin}"}) as client:  # fmt: skip
        wait_for("vm2 online", lambda: [
            a["name"] for a in client.get("/api/v1/agents").json() if a["status"] == "online"
        ] == ["vm2"], timeout=60)  # fmt: skip
        vault = {"name": "vault", "location": str(site.tmp / "api-repo"), "password": secret}
        dest = client.post("/api/v1/endpoints", json=vault)
        assert dest.status_code == 201, dest.text
        plan = client.post("/api/v1/plans", json={
            "name": "far", "repository": "vault", "type": "directory", "agent": "vm2",
            "paths": [str(site.tmp / "data")], "schedule": "@yearly"})  # fmt: skip
        assert plan.status_code == 201, plan.text

        runs: list[str] = []

        def queued() -> bool:
            reply = client.post("/api/v1/plans/far/run")  # the service reads new plans in 5 s
            if reply.status_code == 202:
                runs.append(str(reply.json()["run_id"]))
            return bool(runs)

        wait_for("the plan to be known", queued, timeout=60)
        run_id = runs[0]
        wait_for("its run to end", lambda: ended(client, run_id) is not None, timeout=120)
        done = ended(client, run_id)
        assert done is not None and done["state"] == "succeeded", (done, site.log("vm2"))
        assert done["worker"] == "agent:default/vm2" and done["snapshot_id"]
    # The agent's token reads no destination, not even the one its plan writes to: its
    # job brought what the run needed.
    with httpx.Client(base_url=site.url, timeout=30,
                      headers={"Authorization": f"Bearer {vm2}"}) as agent:  # fmt: skip
        for path in ("/api/v1/destinations", "/api/v1/endpoints/vault", "/api/v1/plans/far"):
            assert agent.get(path).status_code == 403, path
    listed = site.safehold("-r", str(site.tmp / "api-repo"), "snapshots", "--json",
                           SAFEHOLD_PASSWORD=secret)  # fmt: skip
    assert done["snapshot_id"][:8] in listed.stdout, listed.stderr
    # The credentials were in the child's environment only: not on the agent's disk (its
    # job's document is gone too), not in any log.
    state = site.tmp / "state-vm2"
    assert not list((state / "jobs").iterdir())
    for path in state.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in site.log("vm2") and secret not in site.log("serve")
