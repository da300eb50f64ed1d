"""``/metrics`` on the real API over a real catalog: values after known runs, what a
token of one project sees, who needs a token, and Prometheus's own ``promtool check
metrics`` on the output."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from sqlalchemy import Engine, text

from safehold.api.app import create_app
from safehold.service.metrics import CatalogCollector, exposition
from tests.api.conftest import Api

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("catalog_cluster")]

NOW = datetime.now(UTC)


def samples(body: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(body) for s in family.samples]


def value(body: str, name: str, **labels: str) -> float | None:
    found = [
        s.value for s in samples(body) if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def add_run(engine: Engine, plan: str, *, state: str, kind: str = "backup",
            started: datetime, seconds: float, read: int | None = None,
            added: int | None = None, snapshot: str | None = None) -> uuid.UUID:  # fmt: skip
    run_id = uuid.uuid4()
    project, name = plan.split("/")
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO runs (id, plan_id, kind, trigger, state, queued_at, started_at, "
                "ended_at, bytes_read, bytes_added, snapshot_id) SELECT :id, id, :kind, "
                "'manual', :state, :queued, :started, :ended, :read, :added, :snap FROM plans "
                "WHERE project = :p AND name = :n"
            ),
            {"id": run_id, "kind": kind, "state": state, "queued": started - timedelta(seconds=2),
             "started": started, "ended": started + timedelta(seconds=seconds), "read": read,
             "added": added, "snap": snapshot, "p": project, "n": name},
        )  # fmt: skip
        if snapshot is not None and state == "succeeded":
            db.execute(
                text(
                    "INSERT INTO restore_points (plan_id, project, snapshot_id, run_id, "
                    "taken_at, bytes_added) SELECT plan_id, :p, :snap, id, :taken, :added "
                    "FROM runs WHERE id = :id"
                ),
                {"p": project, "snap": snapshot, "id": run_id, "taken": started,
                 "added": added},
            )  # fmt: skip
    return run_id


@pytest.fixture(scope="module")
def scraped(api: Api) -> str:
    """The scrape after a failed then a successful backup of default/second."""
    add_run(api.engine, "default/second", state="failed", started=NOW - timedelta(hours=3),
            seconds=4)  # fmt: skip
    add_run(api.engine, "default/second", state="succeeded", started=NOW - timedelta(hours=2),
            seconds=40, read=3000, added=1000, snapshot="cd" * 32)  # fmt: skip
    with api.engine.begin() as db:
        db.execute(text("UPDATE plans SET paused = true WHERE name = 'other'"))
        db.execute(text("UPDATE plans SET settings = settings || '{\"rpo_target\": 3600}' "
                        "WHERE name = 'second'"))  # fmt: skip
    response = httpx.get(f"{api.url}/metrics", timeout=30)  # from 127.0.0.1: no token
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def test_values_after_a_failed_and_a_successful_run(scraped: str) -> None:
    second = {"project": "default", "plan": "second"}
    assert value(scraped, "safehold_runs_total", **second, kind="backup", state="failed") == 1
    assert value(scraped, "safehold_runs_total", **second, kind="backup", state="succeeded") == 1
    last = value(scraped, "safehold_plan_last_success_timestamp_seconds", **second)
    assert last == pytest.approx((NOW - timedelta(hours=2, seconds=-40)).timestamp(), abs=1e-3)
    taken = value(scraped, "safehold_plan_last_restorable_timestamp_seconds", **second)
    assert taken == pytest.approx((NOW - timedelta(hours=2)).timestamp(), abs=1e-3)
    rpo = value(scraped, "safehold_plan_rpo_seconds", **second)
    assert rpo is not None and 7200 <= rpo < 7200 + 300
    assert value(scraped, "safehold_plan_rpo_target_seconds", **second) == 3600
    assert value(scraped, "safehold_plan_rpo_target_seconds", project="default", plan="job") is None
    assert value(scraped, "safehold_backup_read_bytes_total", **second) == 3000
    assert value(scraped, "safehold_backup_added_bytes_total", **second) == 1000
    assert value(scraped, "safehold_plan_deduplication_ratio", **second) == 3.0
    assert value(scraped, "safehold_plan_stored_bytes", **second) == 1000
    assert value(scraped, "safehold_plan_restore_points", **second) == 1
    assert value(scraped, "safehold_plan_paused", project="beta", plan="other") == 1
    assert value(scraped, "safehold_plan_paused", **second) == 0
    # The histogram: the 40 s run is in the 60 s bucket, not the 30 s one; the 4 s in 5 s.
    durations = {s.labels["le"]: s.value for s in samples(scraped)
                 if s.name == "safehold_run_duration_seconds_bucket"
                 and s.labels["kind"] == "backup"}  # fmt: skip
    assert durations["1.0"] == 0 and durations["5.0"] == 1
    assert durations["30.0"] == 1 and durations["60.0"] == 2 and durations["+Inf"] == 2
    assert value(scraped, "safehold_run_duration_seconds_sum", kind="backup") == 44
    assert value(scraped, "safehold_run_wait_seconds_count", kind="backup") == 2
    assert value(scraped, "safehold_slots", project="default", state="succeeded") == 1
    assert value(scraped, "safehold_slots", project="default", state="missed") == 0
    assert value(scraped, "safehold_workers_online") is not None


def test_promtool_accepts_the_output(scraped: str) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    checked = subprocess.run([promtool, "check", "metrics"], input=scraped, text=True,
                             capture_output=True, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "safehold_plan_rpo_seconds" in scraped


def test_a_token_narrows_to_its_project(api: Api, scraped: str) -> None:
    with api.client("beta", "viewer") as client:
        body = client.get("/metrics").text
    plans = {s.labels.get("plan") for s in samples(body)} - {None}
    assert plans == {"other"}
    assert value(body, "safehold_queue_jobs") is None  # the queue's names are cross-project
    with api.client("beta", "agent") as client:
        assert client.get("/metrics").status_code == 403
    bad = httpx.get(f"{api.url}/metrics", headers={"Authorization": "Bearer shk_0_x"})
    assert bad.status_code == 401


def test_a_remote_client_needs_a_token(api: Api) -> None:
    """The app in this process, called as if from another machine (192.0.2.7)."""
    app = create_app(api.engine, plans=lambda: api.specs)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    token = api.tokens["default", "viewer"]

    async def scrape() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://safehold") as client:
            return await client.get("/metrics"), await client.get(
                "/metrics", headers={"Authorization": f"Bearer {token}"}
            )

    refused, allowed = asyncio.run(scrape())
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthenticated"
    assert allowed.status_code == 200
    assert value(allowed.text, "safehold_plan_paused", project="default", plan="job") == 0
    assert value(allowed.text, "safehold_plan_paused", project="beta", plan="other") is None


def test_the_fast_exposition_is_prometheus_clients(api: Api, scraped: str) -> None:
    """The route's own writer of the text format says what prometheus_client's does."""
    families = list(CatalogCollector(api.engine).collect())
    # A label value and a help text that need escaping, an infinity:
    odd = GaugeMetricFamily("safehold_test", "help with \\ and\nnewline", labels=["plan"])
    odd.add_metric(['a "quoted"\\name\n'], float("inf"))
    odd.add_metric(["b"], 0.1)
    families.append(odd)
    registry = CollectorRegistry(auto_describe=False)

    class Fixed(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from families

    registry.register(Fixed())
    assert exposition(families).decode() == generate_latest(registry).decode()
