"""The metrics' collector on a real catalog under a fake clock: exact RPO ages, the
drills' gauges, the verification coverage, and a broken extension that hides nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.core import Metric
from sqlalchemy import Connection, Engine, text

from safehold.clock import FakeClock
from safehold.service import metrics
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.metrics import CatalogCollector, Scope

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(private_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Engine]:
    from tests.servers.private_cluster import fresh_database

    found = fresh_database(private_cluster, "metrics_" + request.node.name[:40].lower())
    prepare(found)
    with found.begin() as db:
        db.execute(
            text(
                "INSERT INTO plans (project, name, origin, schedule) VALUES "
                "('p', 'db', 'api', '@daily'), ('q', 'files', 'api', '@daily')"
            )
        )
    try:
        yield found
    finally:
        found.dispose()


Labels = frozenset[tuple[str, str]]


def values(engine: Engine, project: str | None = None) -> dict[tuple[str, Labels], float]:
    collector = CatalogCollector(engine, project=project, clock=FakeClock(NOW))
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in collector.collect() for s in family.samples
    }  # fmt: skip


def plan(name: str, project: str = "p") -> Labels:
    return frozenset({("project", project), ("plan", name)})


def test_rpo_is_the_newest_kept_points_age(engine: Engine) -> None:
    with engine.begin() as db:
        for hours, forgotten in ((30, None), (6, None), (1, NOW)):
            db.execute(
                text(
                    "INSERT INTO restore_points (plan_id, project, snapshot_id, taken_at, "
                    "forgotten_at) SELECT id, 'p', :snap, :at, :gone FROM plans WHERE name = 'db'"
                ),
                {"snap": uuid.uuid4().hex, "at": NOW - timedelta(hours=hours), "gone": forgotten},
            )
    found = values(engine)
    # The point of an hour ago is forgotten: the newest kept one is 6 hours old.
    assert found["safehold_plan_rpo_seconds", plan("db")] == 6 * 3600
    assert found["safehold_plan_restore_points", plan("db")] == 2
    assert ("safehold_plan_rpo_seconds", plan("files", "q")) not in found  # never backed up
    only_q = values(engine, "q")
    assert {labels for (_, labels) in only_q if ("plan", "db") in labels} == set()


def test_drill_gauges_of_each_plans_newest_drill(engine: Engine) -> None:
    assert not any(name.startswith("safehold_plan_last_drill") for name, _ in values(engine))
    with engine.begin() as db:
        for hours, result, seconds in ((48, "passed", 100.0), (24, "failed", 1300.0)):
            db.execute(
                text(
                    "INSERT INTO drills (project, plan, started_at, finished_at, result, "
                    "restore_seconds, rto_target_seconds) VALUES ('p', 'db', :at, :at, :r, "
                    ":s, 900)"
                ),
                {"at": NOW - timedelta(hours=hours), "r": result, "s": seconds},
            )
    found = values(engine)
    assert found["safehold_plan_last_drill_timestamp_seconds", plan("db")] == (
        (NOW - timedelta(hours=24)).timestamp()
    )
    assert found["safehold_plan_last_drill_passed", plan("db")] == 0
    assert found["safehold_plan_drill_restore_seconds", plan("db")] == 1300
    assert found["safehold_plan_drill_rto_target_seconds", plan("db")] == 900


def test_a_broken_extension_hides_nothing_else(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(db: Connection, scope: Scope) -> Iterator[Metric]:
        db.execute(text("SELECT * FROM no_such_table"))
        yield from ()

    def later(db: Connection, scope: Scope) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("safehold_test_later", "after the broken one", value=1.0)

    monkeypatch.setattr(metrics, "EXTENSIONS", [broken, later])
    found = values(engine)
    assert found["safehold_test_later", frozenset()] == 1
    assert found["safehold_plan_paused", plan("db")] == 0


def test_the_running_plans_rpo_target_wins_over_the_catalogs(engine: Engine) -> None:
    from types import SimpleNamespace

    from safehold.service.metrics_targets import rpo_targets

    with engine.begin() as db:
        db.execute(text("UPDATE plans SET settings = '{\"rpo_target\": 7200}'"))
    specs = [SimpleNamespace(project="p", name="db", rpo_target=600.0),
             SimpleNamespace(project="q", name="files")]  # fmt: skip
    targets = rpo_targets(specs)
    assert targets == {"p/db": 600.0}
    collector = CatalogCollector(engine, clock=FakeClock(NOW), rpo_targets=targets)
    found = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in collector.collect() for s in family.samples
    }  # fmt: skip
    assert found["safehold_plan_rpo_target_seconds", plan("db")] == 600
    assert found["safehold_plan_rpo_target_seconds", plan("files", "q")] == 7200


def test_the_coverage_of_each_verified_repository_a_scrape_may_see(engine: Engine) -> None:
    from safehold.catalog import RunKind
    from safehold.policy.schedule import parse_schedule
    from safehold.service.coverage import verify_periods
    from safehold.service.plans import PlanSpec

    with engine.begin() as db:
        for repo, pack, size, read, result in [
            ("/srv/a", "p1", 300, NOW - timedelta(days=2), "ok"),
            ("/srv/a", "p2", 100, NOW - timedelta(days=1), "damaged"),
            ("/srv/b", "p3", 50, None, None),
        ]:
            db.execute(
                text("INSERT INTO verify_packs (repository, pack_id, size, first_seen, "
                     "last_read, last_result) VALUES (:r, :p, :s, :f, :l, :res)"),
                {"r": repo, "p": pack, "s": size, "f": NOW - timedelta(days=9), "l": read,
                 "res": result},
            )  # fmt: skip
    daily = parse_schedule("@daily", key="x")
    specs = [
        PlanSpec(project="p", name="db", config_path="", schedule=daily, repository="/srv/a"),
        PlanSpec(project="q", name="files", config_path="", schedule=daily, repository="/srv/b"),
        *(PlanSpec(project="_verify", name=repo, config_path="", schedule=daily,
                   repository=repo, kind=RunKind.VERIFY, verify_period="30d")
          for repo in ("/srv/a", "/srv/b")),
    ]  # fmt: skip

    def scrape(project: str | None) -> dict[tuple[str, Labels], float]:
        collector = CatalogCollector(
            engine, project=project, clock=FakeClock(NOW),
            verify_periods=verify_periods(specs, project),
        )  # fmt: skip
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in collector.collect() for s in family.samples
        }  # fmt: skip

    a, b = frozenset({("repository", "/srv/a")}), frozenset({("repository", "/srv/b")})
    everything = scrape(None)
    assert everything["safehold_repository_verification_coverage_ratio", a] == 0.75
    assert everything["safehold_repository_damaged_packs", a] == 1
    assert everything["safehold_repository_stored_bytes", a] == 400
    assert everything["safehold_repository_verification_coverage_ratio", b] == 0
    assert ("safehold_repository_oldest_pack_read_timestamp_seconds", b) not in everything
    # A scrape narrowed to project p sees the repository p writes to, not q's.
    narrowed = scrape("p")
    assert ("safehold_repository_verification_coverage_ratio", a) in narrowed
    assert ("safehold_repository_verification_coverage_ratio", b) not in narrowed
