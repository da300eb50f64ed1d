"""Alerts in a real ``safehold serve``: a plan whose hook fails is told once through a
signed webhook, pinged at each run's start and failure, and listed by ``safehold alerts``;
fixing the hook (a reload is not even needed) resolves it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from safehold.notify import sign
from tests.conftest import PASSWORD
from tests.e2e.waiting import wait_for
from tests.notify_receivers import HttpReceiver, http_receiver

__all__ = ["http_receiver"]

pytestmark = pytest.mark.slow

SECRET = "e2e-webhook-secret-42"


def test_serve_tells_a_failure_once_and_its_resolution(
    make_state_dir: Callable[[], Path], tmp_path: Path, cli_repo: str,
    http_receiver: HttpReceiver,
) -> None:  # fmt: skip
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("x\n")
    hook = tmp_path / "lock.sh"
    hook.write_text('#!/bin/sh\n[ -e "$0.ok" ] && exit 0\necho "shop is busy" >&2\nexit 4\n')
    hook.chmod(0o755)
    hc = f"{http_receiver.base}/hc/1f0e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"""
repository: {{location: {cli_repo}, password_env: REPO_PW}}
alerts:
  evaluate_every: 1s
  receivers:
    ops:
      channels:
        - {{type: webhook, url: "{http_receiver.base}/hook", secret: "${{HOOK_SECRET}}"}}
sources:
  job:
    type: directory
    paths: [{tmp_path / "data"}]
    project: shop
    schedule: "*/20 * * * * *"
    hooks: {{pre-backup-lock: {hook}}}
    ping: {{start: "{hc}/start", success: "{hc}", fail: "{hc}/fail"}}
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env.update(REPO_PW=PASSWORD.decode(), HOOK_SECRET=SECRET, HOME=str(tmp_path / "home"),
               SAFEHOLD_CACHE_DIR=str(tmp_path / "cache"))  # fmt: skip
    state = make_state_dir()
    base = ["--config", str(config), "--state-dir", str(state)]
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "safehold", "--log-format", "json", "serve", *base,
             "--tick", "0.5", "--workers", "1", "--listen", "127.0.0.1:0"],
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    try:

        def hooks(event: str) -> list[dict[str, object]]:
            found = []
            for r in list(http_receiver.requests):
                if r.path == "/hook":
                    stamp = r.headers["X-Safehold-Timestamp"]
                    assert r.headers["X-Safehold-Signature"] == sign(SECRET, stamp, r.body)
                    if r.json()["event"] == event:
                        found.append(r.json())
            return found

        wait_for("the failure's webhook", lambda: bool(hooks("opened")), timeout=180)
        (opened,) = hooks("opened")
        assert (opened["kind"], opened["project"], opened["plan"]) == ("run_failed", "shop", "job")
        assert opened["phase"] == "pre-backup-lock" and "shop is busy" in str(opened["error"])
        assert "/hc/1f0e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/fail" in http_receiver.paths()
        listed = subprocess.run(
            [sys.executable, "-m", "safehold", "alerts", *base, "--json"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        (incident,) = json.loads(listed.stdout)
        assert (incident["kind"], incident["state"], incident["sent"]) == ("run_failed", "open", 1)

        Path(f"{hook}.ok").write_text("")  # the next slot's run succeeds
        wait_for("the resolved webhook", lambda: bool(hooks("resolved")), timeout=180)
        assert len(hooks("opened")) == 1  # told once, however many failed runs and passes
        assert "/hc/1f0e2d3c-4b5a-6978-8796-a5b4c3d2e1f0" in http_receiver.paths()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "SECRET" not in log.read_text() and SECRET not in log.read_text()
