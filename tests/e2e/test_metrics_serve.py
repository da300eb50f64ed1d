"""``safehold serve`` as operators run it, scraped: real backups (one succeeds, one fails)
run through its API, then ``/metrics`` read from loopback, checked by Prometheus's own
``promtool check metrics`` and its values asserted; the report cycle's log line."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import test_serve_api
from tests.e2e.test_serve_api import Serve
from tests.e2e.waiting import wait_for

pytestmark = pytest.mark.slow

serve = test_serve_api.serve  # the fixture: a config, its state folder, serve on a free port


def test_scraped_after_real_runs(serve: Serve) -> None:
    data, repo = serve.tmp / "data", serve.tmp / "repo"
    service = next(line for line in serve.config.read_text().splitlines()
                   if line.startswith("service:"))  # fmt: skip
    serve.config.write_text(
        f"repository: {{location: {repo}, password_env: REPO_PW}}\n"
        f"{service}\n"
        f"reports: {{period: 1h, folder: {serve.tmp / 'reports'}}}\n"
        f"sources:\n  job:\n    type: directory\n    paths: [{data}]\n"
        '    schedule: "@daily"\n'
        f"  broken:\n    type: directory\n    paths: [{serve.tmp / 'gone'}]\n"
        '    schedule: "@daily"\n'
    )
    made = serve.safehold("token", "create", "--config", str(serve.config), "--project",
                          "default", "--role", "operator")  # fmt: skip
    assert made.returncode == 0, made.stderr
    base = serve.start()
    auth = {"Authorization": f"Bearer {made.stdout.strip()}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
        runs = {plan: client.post(f"/api/v1/plans/{plan}/run").json()["run_id"]
                for plan in ("job", "broken")}  # fmt: skip

        def ended() -> bool:
            states = [client.get(f"/api/v1/runs/{r}").json()["state"] for r in runs.values()]
            return all(s not in ("queued", "running") for s in states)

        wait_for("both runs to end", ended, timeout=120)
    started = time.monotonic()
    scraped = httpx.get(f"{base}/metrics", timeout=30)
    took = time.monotonic() - started
    assert scraped.status_code == 200, scraped.text
    body = scraped.text
    checked = subprocess.run([shutil.which("promtool") or "/usr/bin/promtool", "check",
                              "metrics"], input=body, text=True, capture_output=True,
                             timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body) for s in family.samples
    }  # fmt: skip

    def value(name: str, **labels: str) -> float | None:
        return found.get((name, tuple(sorted(labels.items()))))

    job, broken = {"project": "default", "plan": "job"}, {"project": "default", "plan": "broken"}
    assert value("safehold_runs_total", **job, kind="backup", state="succeeded") == 1
    assert value("safehold_runs_total", **broken, kind="backup", state="failed") == 1
    assert value("safehold_runs_total", **job, kind="backup", state="failed") is None
    assert value("safehold_plan_last_success_timestamp_seconds", **broken) is None
    last = value("safehold_plan_last_success_timestamp_seconds", **job)
    assert last is not None and abs(time.time() - last) < 300
    assert value("safehold_plan_last_restorable_timestamp_seconds", **job) is not None
    assert value("safehold_plan_restore_points", **job) == 1
    assert value("safehold_plan_restore_points", **broken) == 0
    assert value("safehold_backup_read_bytes_total", **job) == len("some data\n")
    # The repository has no verify: block; its size is the succeeded backup's figure,
    # which is what its pack files take on disk.
    packs = [f for f in (repo / "data").rglob("*") if f.is_file()]
    assert packs
    stored = value("safehold_repository_stored_bytes", repository=str(repo))
    assert stored == sum(f.stat().st_size for f in packs)
    assert value("safehold_run_duration_seconds_count", kind="backup") == 2
    workers = value("safehold_workers_online")
    assert workers is not None and workers >= 1
    assert took < 5, took
    assert serve.stop() == 0
    # The report cycle ran at start: the last hour's report, to the log (no receivers).
    assert re.search(r'"event": "report".*"project": "default"', serve.text()), serve.text()
