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


def test_every_repository_s_stored_bytes_verification_first_else_the_newest_backup(
    engine: Engine,
) -> None:
    """``safehold_repository_stored_bytes`` for a repository without verification is the
    newest succeeded backup's recorded figure among the plans writing to it (a run of an
    older child that recorded none, a failure, another kind: skipped); a verification that
    listed the packs wins; a verify plan that listed none yet does not hide the backups'."""
    from safehold.catalog import RunKind
    from safehold.policy.schedule import parse_schedule
    from safehold.service.coverage import verify_periods
    from safehold.service.plans import PlanSpec
    from safehold.service.repository_bytes import plan_repositories

    s3 = "s3:https://AKIA:secret@s3.example.com/bucket"
    with engine.begin() as db:
        db.execute(text("INSERT INTO plans (project, name, origin, schedule) "
                        "VALUES ('p', 'logs', 'api', '@daily')"))  # fmt: skip
        for name, kind, state, hours, size in [
            ("db", "backup", "succeeded", 5, 900),
            ("db", "backup", "succeeded", 2, 1000),
            ("logs", "backup", "succeeded", 1, 1200),  # the newest into /srv/a
            ("db", "backup", "succeeded", 0.5, None),  # a child from before the figure
            ("db", "backup", "failed", 0.2, None),
            ("db", "restore", "succeeded", 0.1, None),
            ("files", "backup", "succeeded", 3, 500),
            ("files", "backup", "succeeded", 4, 7777),  # older than 500's
        ]:
            end = NOW - timedelta(hours=hours)
            db.execute(
                text("INSERT INTO runs (id, plan_id, kind, trigger, state, queued_at, "
                     "started_at, ended_at, repository_bytes) SELECT :id, id, :kind, 'manual', "
                     ":state, :q, :q, :e, :size FROM plans WHERE name = :name"),
                {"id": uuid.uuid4(), "kind": kind, "state": state, "size": size,
                 "q": end - timedelta(minutes=5), "e": end, "name": name},
            )  # fmt: skip
    daily = parse_schedule("@daily", key="x")
    specs = [
        PlanSpec(project="p", name="db", config_path="", schedule=daily, repository="/srv/a"),
        PlanSpec(project="p", name="logs", config_path="", schedule=daily, repository="/srv/a"),
        PlanSpec(project="q", name="files", config_path="", schedule=daily, repository=s3),
    ]
    repositories = plan_repositories(specs)
    assert repositories["q/files"] == "s3:https://s3.example.com/bucket"  # no credentials

    def scrape(project: str | None, verified: list[PlanSpec]) -> dict[tuple[str, Labels], float]:
        collector = CatalogCollector(
            engine, project=project, clock=FakeClock(NOW), repositories=repositories,
            verify_periods=verify_periods([*specs, *verified], project),
        )  # fmt: skip
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in collector.collect() for s in family.samples
            if s.name == "safehold_repository_stored_bytes"
        }  # fmt: skip

    def repo(name: str) -> Labels:
        return frozenset({("repository", name)})

    a, bucket = repo("/srv/a"), repo("s3:https://s3.example.com/bucket")
    name = "safehold_repository_stored_bytes"
    assert scrape(None, []) == {(name, a): 1200, (name, bucket): 500}
    # A project's scrape sees the repositories its plans write to, and nothing else.
    assert scrape("q", []) == {(name, bucket): 500}
    assert scrape("nobody", []) == {}
    # Verification of /srv/a and of the bucket: /srv/a's slices listed its packs and win;
    # the bucket's have listed nothing yet, so its backups' figure stays.
    with engine.begin() as db:
        db.execute(text("INSERT INTO verify_packs (repository, pack_id, size, first_seen) "
                        "VALUES ('/srv/a', 'p1', 300, :f), ('/srv/a', 'p2', 100, :f)"),
                   {"f": NOW - timedelta(days=1)})  # fmt: skip
    verified = [
        PlanSpec(project="_verify", name=redacted, config_path="", schedule=daily,
                 repository=location, kind=RunKind.VERIFY, verify_period="30d")
        for location, redacted in (("/srv/a", "/srv/a"), (s3, repositories["q/files"]))
    ]  # fmt: skip
    assert plan_repositories(verified) == {}  # a verify plan backs nothing up
    assert scrape(None, verified) == {(name, a): 400, (name, bucket): 500}
    assert scrape("p", verified) == {(name, a): 400}
