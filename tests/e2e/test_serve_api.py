"""``safehold serve --listen`` as operators run it: a token made with ``safehold token
create``, the API called over HTTP (and HTTPS), a plan run and followed to its snapshot,
the token revoked; no token in the service's log."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.e2e.waiting import wait_for

pytestmark = pytest.mark.slow


class Serve:
    """A config, its state folder, and ``safehold serve`` started on a free port."""

    def __init__(self, tmp: Path, state_dir: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.log = tmp / "serve.log"
        self.config = tmp / "safehold.yaml"
        (tmp / "data").mkdir()
        (tmp / "data" / "file").write_text("some data\n")
        self.hang_pid = tmp / "hang.pid"
        hang = tmp / "hang.sh"
        hang.write_text(f"#!/bin/sh\necho $$ > {self.hang_pid}\nexec sleep 120\n")
        hang.chmod(0o755)
        self.config.write_text(
            f"repository: {{location: {tmp / 'repo'}, password_env: REPO_PW}}\n"
            f"service: {{state_dir: {state_dir}}}\n"
            f"sources:\n  job:\n    type: directory\n    paths: [{tmp / 'data'}]\n"
            '    schedule: "@daily"\n'
            f"  hangs:\n    type: directory\n    paths: [{tmp / 'data'}]\n"
            f'    schedule: "@daily"\n    hooks: {{pre-backup-lock: {hang}}}\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def safehold(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "safehold", *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    def start(self, *extra: str) -> str:
        """Start ``serve``; its API's base URL, read from its log."""
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "safehold", "serve", "--config", str(self.config),
                 "--workers", "1", "--tick", "0.5", "--listen", "127.0.0.1:0", *extra],
                env=self.env, stdout=out, stderr=out,
            )  # fmt: skip
        found: list[str] = []

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            found[:] = re.findall(r"API listening on (https?://127\.0\.0\.1:\d+)", self.text())
            return bool(found)

        wait_for("the API to listen", listening, timeout=90)
        return found[0]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code


@pytest.fixture
def serve(make_state_dir: Callable[[], Path], tmp_path: Path) -> Iterator[Serve]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env.update(REPO_PW=PASSWORD.decode(), HOME=str(tmp_path / "home"),
               SAFEHOLD_CACHE_DIR=str(tmp_path / "cache"))  # fmt: skip
    found = Serve(tmp_path, make_state_dir(), env)
    init = found.safehold("-r", str(tmp_path / "repo"), "init", "--kdf-log2n", "10",
                          SAFEHOLD_PASSWORD=PASSWORD.decode())  # fmt: skip
    assert init.returncode == 0, init.stderr
    try:
        yield found
    finally:
        if found.proc is not None:
            found.proc.kill()
            found.proc.wait()


def test_a_session_through_the_api(serve: Serve) -> None:
    made = serve.safehold("token", "create", "--config", str(serve.config), "--project",
                          "default", "--role", "operator", "--name", "e2e")  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and re.fullmatch(r"shk_[0-9a-f]{16}_[\w-]{43}", token)
    base = serve.start()
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        # The log says where the dashboard is and how to get in; it answers there.
        assert f"dashboard: {base}/ui/ (log in with a token: safehold token create" in serve.text()
        assert client.get("/ui/login").status_code == 200
        plans = client.get("/api/v1/plans").json()
        assert [plan["name"] for plan in plans] == ["hangs", "job"]
        run_id = client.post("/api/v1/plans/job/run").json()["run_id"]

        def ended() -> bool:
            return client.get(f"/api/v1/runs/{run_id}").json()["state"] != "queued" and (
                client.get(f"/api/v1/runs/{run_id}").json()["state"] != "running"
            )

        wait_for("the run to end", ended, timeout=120)
        run = client.get(f"/api/v1/runs/{run_id}").json()
        assert run["state"] == "succeeded", (run["error"], run["lines"][-3:])
        assert any(line["message"].startswith("run.finished") for line in run["lines"])
        managed = client.get("/api/v1/managed", params={"backup_id": run["snapshot_id"]})
        assert managed.json()["managed"] is True
        assert client.get("/api/v1/tokens").status_code == 403  # an operator's
    listed = json.loads(serve.safehold("--json", "token", "list", "--config",
                                       str(serve.config)).stdout)  # fmt: skip
    assert [t["name"] for t in listed] == ["e2e"] and listed[0]["last_used_at"]
    assert token.split("_", 2)[2] not in json.dumps(listed)
    revoked = serve.safehold("token", "revoke", listed[0]["id"], "--config", str(serve.config))
    assert revoked.returncode == 0, revoked.stderr
    assert httpx.get(f"{base}/api/v1/plans", headers=auth).status_code == 401
    assert serve.stop() == 0
    assert token.split("_", 2)[2] not in serve.text()


def test_https_and_a_port_in_use(serve: Serve, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip("no openssl to make a certificate")
    base = serve.start("--tls-cert", str(cert), "--tls-key", str(key))
    assert base.startswith("https://")
    context = ssl.create_default_context(cafile=str(cert))
    assert httpx.get(f"{base}/healthz", verify=context).json() == {"status": "ok"}
    port = base.rsplit(":", 1)[1]
    taken = serve.safehold("serve", "--config", str(serve.config), "--listen",
                           f"127.0.0.1:{port}")  # fmt: skip
    assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    assert serve.stop() == 0
    wrong = serve.safehold("serve", "--config", str(serve.config), "--listen", "127.0.0.1:0",
                           "--tls-cert", str(key), "--tls-key", str(cert))  # fmt: skip
    assert wrong.returncode == 2 and "cannot serve HTTPS" in wrong.stderr, wrong.stderr


def test_cancel_a_running_run(serve: Serve) -> None:
    made = serve.safehold("token", "create", "--config", str(serve.config), "--project",
                          "default", "--role", "operator")  # fmt: skip
    base = serve.start()
    auth = {"Authorization": f"Bearer {made.stdout.strip()}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as client:

        def state(run_id: str) -> str:
            return str(client.get(f"/api/v1/runs/{run_id}").json()["state"])

        first = client.post("/api/v1/plans/hangs/run").json()["run_id"]
        wait_for("the hook to start", serve.hang_pid.exists, timeout=60)
        hook = int(serve.hang_pid.read_text())
        assert state(first) == "running"
        serve.hang_pid.unlink()
        cancelled = client.post(f"/api/v1/runs/{first}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        wait_for("the hook to be stopped", lambda: not Path(f"/proc/{hook}").exists(), 60)
        # The plan's lock is free again: its next run starts.
        second = client.post("/api/v1/plans/hangs/run").json()["run_id"]
        wait_for("the next run to start", serve.hang_pid.exists, timeout=60)
        assert state(second) == "running" and state(first) == "cancelled"
        assert client.post(f"/api/v1/runs/{second}/cancel").json()["state"] == "cancelled"
        error = client.post(f"/api/v1/runs/{first}/cancel")
        assert error.status_code == 409 and error.json()["error"]["code"] == "conflict"
    assert serve.stop() == 0
