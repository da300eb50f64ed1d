"""The service's Prometheus metrics, read from the catalog when they are scraped.

Nothing is counted in a process's memory: every scrape asks the catalog (a handful of
aggregate queries, :class:`CatalogCollector`), so that any ``safehold serve`` sharing the
database answers the same numbers, and a restarted one loses nothing. Counters (``_total``)
are therefore sums over the runs the catalog still holds: deleting a plan (its runs go
with it) lowers them, which Prometheus reads as a counter reset.

Names follow Prometheus's conventions: the ``safehold_`` prefix, base units (seconds,
bytes), ``_total`` for counters and ``_timestamp_seconds`` for points in time. Each metric
is described in docs/metrics.md.

Extension point: :data:`EXTENSIONS` is a list of functions ``(connection, scope) ->
metric families`` run at every scrape after the built-in ones. The drills' gauges
(:func:`drill_metrics`) are one; the verification coverage and the repositories' stored
bytes are built in (:func:`coverage_metrics`, for the repositories the scope's
``verify_periods`` and ``repositories`` name).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from sqlalchemy import Connection, Engine, bindparam, text

from safehold.catalog.models import RunState, SlotState
from safehold.clock import SYSTEM_CLOCK, Clock, utcnow
from safehold.service.coverage import coverages_on
from safehold.service.jobs import STALL_SECONDS
from safehold.service.metrics_targets import Targets
from safehold.service.metrics_targets import seconds as _seconds
from safehold.service.repository_bytes import repository_bytes_on

__all__ = [
    "DURATION_BUCKETS",
    "EXTENSIONS",
    "WAIT_BUCKETS",
    "CatalogCollector",
    "Extension",
    "Scope",
    "coverage_metrics",
    "drill_metrics",
    "exposition",
    "register_extension",
    "registry",
]

log = logging.getLogger("safehold.metrics")

# A run lasts from seconds (a small folder) to hours (a large database): buckets up to 12 h.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
                    14400.0, 43200.0)  # fmt: skip
# A job waits for a free worker, a repository's limit or its agent: seconds to an hour.
WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
_FINAL = tuple(s.value for s in RunState if s not in (RunState.QUEUED, RunState.RUNNING))


@dataclass(frozen=True)
class Scope:
    """What a scrape may see: every project (``project`` None), or one."""

    project: str | None = None
    now: datetime | None = None  # the scrape's time, from the service's clock
    # The running service's rpo_target per plan key; the catalog's settings otherwise.
    rpo_targets: Targets = field(default_factory=dict)
    # ``repository -> period`` of the verified repositories the scrape may see
    # (service/coverage.py's verify_periods).
    verify_periods: Mapping[str, str] = field(default_factory=dict)
    # ``plan key -> repository`` of the running service's backup plans (every project's:
    # a repository's size is its newest backup's, whoever made it), for the stored bytes
    # of the repositories without verification (service/repository_bytes.py).
    repositories: Mapping[str, str] = field(default_factory=dict)


Extension = Callable[[Connection, Scope], Iterable[Metric]]
EXTENSIONS: list[Extension] = []


def register_extension(extension: Extension) -> Extension:
    """Add ``extension`` to every scrape (usable as a decorator); returned unchanged."""
    if extension not in EXTENSIONS:
        EXTENSIONS.append(extension)
    return extension


class CatalogCollector(Collector):
    """The catalog's numbers as Prometheus metric families, read at each :meth:`collect`."""

    def __init__(
        self,
        engine: Engine,
        *,
        project: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rpo_targets: Targets | None = None,
        verify_periods: Mapping[str, str] | None = None,
        repositories: Mapping[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self.project = project
        self.clock = clock
        self.rpo_targets = rpo_targets or {}
        self.verify_periods = verify_periods or {}
        self.repositories = repositories or {}

    def collect(self) -> Iterator[Metric]:
        """Every metric family, from one connection (one snapshot of each table)."""
        scope = Scope(
            self.project, self.clock.now(), self.rpo_targets, self.verify_periods,
            self.repositories,
        )  # fmt: skip
        with self.engine.connect() as db:
            # One REPEATABLE READ transaction: the queries see one state of the catalog.
            db.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            yield from _plans(db, scope)
            yield from _runs(db, scope)
            yield from _histograms(db, scope)
            yield from _slots(db, scope)
            yield from _queue(db, scope)
            yield from _agents(db, scope)
            yield from coverage_metrics(db, scope)
            for extension in EXTENSIONS:
                try:
                    yield from extension(db, scope)
                except Exception as exc:  # one broken extension must not hide the rest
                    log.warning("metrics extension %s failed: %s", extension.__name__, exc)
                    db.rollback()


def exposition(families: Iterable[Metric]) -> bytes:
    """``families`` in Prometheus's text format 0.0.4.

    prometheus_client's ``generate_latest`` validates and escapes every name of every
    sample again, which was two thirds of a scrape of 1,000 plans (12,000 series): here
    names are this module's constants and only label values and help texts need escaping.
    """
    out: list[str] = []
    for family in families:
        kind = family.type
        help_ = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {family.name}{'_total' if kind == 'counter' else ''} {help_}\n")
        out.append(f"# TYPE {family.name}{'_total' if kind == 'counter' else ''} {kind}\n")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # not part of the 0.0.4 format
            if sample.labels:
                pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
                out.append(f"{sample.name}{{{pairs}}} {_number(sample.value)}\n")
            else:
                out.append(f"{sample.name} {_number(sample.value)}\n")
    return "".join(out).encode()


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
    return value


def _number(value: float) -> str:
    # prometheus_client's own formatting (Go's float syntax), so the two writers agree.
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def registry(engine: Engine, *, project: str | None = None, clock: Clock = SYSTEM_CLOCK) -> (
    CollectorRegistry
):  # fmt: skip
    """A registry holding only the catalog's collector (no process metrics: those of one
    serve process would differ between the processes behind one address)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(CatalogCollector(engine, project=project, clock=clock))
    return found


_PROJECT = "(CAST(:project AS text) IS NULL OR p.project = CAST(:project AS text))"
_PLAN_LABELS = ["project", "plan"]


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _plans(db: Connection, scope: Scope) -> Iterator[Metric]:
    rows = db.execute(
        text(
            "SELECT p.project, p.name, p.paused, p.settings->>'rpo_target' AS rpo_target, "
            "rp.newest, rp.points, rp.stored "
            "FROM plans p LEFT JOIN ("
            "  SELECT plan_id, max(taken_at) AS newest, count(*) AS points, "
            "         coalesce(sum(bytes_added), 0) AS stored "
            "  FROM restore_points WHERE forgotten_at IS NULL GROUP BY plan_id"
            f") rp ON rp.plan_id = p.id WHERE {_PROJECT} ORDER BY p.project, p.name"
        ),
        {"project": scope.project},
    ).all()
    paused = GaugeMetricFamily(
        "safehold_plan_paused", "1 if the plan is paused (no slot runs), else 0",
        labels=_PLAN_LABELS,
    )  # fmt: skip
    restorable = GaugeMetricFamily(
        "safehold_plan_last_restorable_timestamp_seconds",
        "When the plan's newest restore point still in its repository was taken",
        labels=_PLAN_LABELS,
    )
    rpo = GaugeMetricFamily(
        "safehold_plan_rpo_seconds",
        "Age of the plan's newest restore point: the data lost if its source died now",
        labels=_PLAN_LABELS,
    )
    target = GaugeMetricFamily(
        "safehold_plan_rpo_target_seconds",
        "The plan's rpo_target (only plans that set one)",
        labels=_PLAN_LABELS,
    )
    points = GaugeMetricFamily(
        "safehold_plan_restore_points", "Restore points of the plan still in its repository",
        labels=_PLAN_LABELS,
    )  # fmt: skip
    stored = GaugeMetricFamily(
        "safehold_plan_stored_bytes",
        "New data (before compression) the plan's kept restore points added to the repository",
        labels=_PLAN_LABELS,
    )
    now = scope.now.timestamp() if scope.now else None
    for row in rows:
        labels = [row.project, row.name]
        paused.add_metric(labels, 1.0 if row.paused else 0.0)
        points.add_metric(labels, float(row.points or 0))
        stored.add_metric(labels, float(row.stored or 0))
        newest = _ts(row.newest)
        if newest is not None:
            restorable.add_metric(labels, newest)
            if now is not None:
                rpo.add_metric(labels, max(0.0, now - newest))
        seconds = scope.rpo_targets.get(f"{row.project}/{row.name}", _seconds(row.rpo_target))
        if seconds is not None:
            target.add_metric(labels, seconds)
    yield from (paused, restorable, rpo, target, points, stored)


def _runs(db: Connection, scope: Scope) -> Iterator[Metric]:
    rows = db.execute(
        text(
            # Grouped by the plan's id, then named: hashing integers, not texts.
            "SELECT p.project, p.name, r.kind, r.state, r.n, r.read, r.added, r.last_end "
            "FROM (SELECT plan_id, kind, state, count(*) AS n, "
            "  coalesce(sum(bytes_read), 0) AS read, coalesce(sum(bytes_added), 0) AS added, "
            "  max(ended_at) AS last_end FROM runs WHERE state IN :final "
            "  GROUP BY plan_id, kind, state) r "
            f"JOIN plans p ON p.id = r.plan_id WHERE {_PROJECT} ORDER BY 1, 2, 3, 4"
        ).bindparams(bindparam("final", expanding=True)),
        {"project": scope.project, "final": list(_FINAL)},
    ).all()
    total = CounterMetricFamily(
        "safehold_runs", "Runs that ended, by plan, kind and final state",
        labels=[*_PLAN_LABELS, "kind", "state"],
    )  # fmt: skip
    success = GaugeMetricFamily(
        "safehold_plan_last_success_timestamp_seconds",
        "When the plan's last successful backup run ended",
        labels=_PLAN_LABELS,
    )
    read = CounterMetricFamily(
        "safehold_backup_read_bytes", "Bytes successful backups read from the plan's source",
        labels=_PLAN_LABELS,
    )  # fmt: skip
    added = CounterMetricFamily(
        "safehold_backup_added_bytes",
        "New data (before compression) successful backups added to the repository",
        labels=_PLAN_LABELS,
    )
    ratio = GaugeMetricFamily(
        "safehold_plan_deduplication_ratio",
        "Bytes read per new byte added, over the plan's successful backups (1: nothing "
        "deduplicated)",
        labels=_PLAN_LABELS,
    )
    for row in rows:
        labels = [row.project, row.name]
        total.add_metric([*labels, row.kind, row.state], float(row.n))
        if row.kind == "backup" and row.state == RunState.SUCCEEDED.value:
            if row.last_end is not None:
                success.add_metric(labels, row.last_end.timestamp())
            read.add_metric(labels, float(row.read))
            added.add_metric(labels, float(row.added))
            if row.added:
                ratio.add_metric(labels, float(row.read) / float(row.added))
    yield from (total, success, read, added, ratio)


def _histogram_sql(expression: str, where: str) -> str:
    # width_bucket over the negated bounds counts the bounds at or above a value (the
    # buckets it is in, Prometheus's inclusive ``le``) in one pass: one count per row, not
    # one FILTER per bucket.
    return (
        "SELECT kind, width_bucket(-d, CAST(:bounds AS float8[])) AS k, count(*), "
        "coalesce(sum(d), 0) FROM ("
        f"  SELECT r.kind, extract(epoch FROM {expression})::float8 AS d "
        f"  FROM runs r JOIN plans p ON p.id = r.plan_id WHERE {where} AND {_PROJECT}"
        ") t GROUP BY kind, k ORDER BY kind, k"
    )


def _histogram(
    db: Connection, scope: Scope, family: HistogramMetricFamily, sql: str,
    buckets: tuple[float, ...],
) -> HistogramMetricFamily:  # fmt: skip
    bounds = sorted(-b for b in buckets)
    # kind -> counts[k] (k: how many bounds are >= the value), and the values' sum
    found: dict[str, tuple[list[int], float]] = {}
    for kind, k, n, total in db.execute(text(sql), {"project": scope.project, "bounds": bounds}):
        counts, sum_ = found.setdefault(kind, ([0] * (len(buckets) + 1), 0.0))
        counts[k] += n
        found[kind] = (counts, sum_ + float(total))
    for kind, (counts, sum_) in sorted(found.items()):
        # The j-th smallest bound holds the values with at least len - j bounds above them.
        cumulative = [
            (_le(b), float(sum(counts[len(buckets) - j :]))) for j, b in enumerate(sorted(buckets))
        ]
        cumulative.append(("+Inf", float(sum(counts))))
        family.add_metric([kind], cumulative, sum_)
    return family


def _le(bound: float) -> str:
    return repr(bound)


def _histograms(db: Connection, scope: Scope) -> Iterator[Metric]:
    yield _histogram(
        db, scope,
        HistogramMetricFamily(
            "safehold_run_duration_seconds", "How long runs that ended took, by kind",
            labels=["kind"],
        ),
        _histogram_sql(
            "r.ended_at - r.started_at", "r.started_at IS NOT NULL AND r.ended_at IS NOT NULL"
        ),
        DURATION_BUCKETS,
    )  # fmt: skip
    yield _histogram(
        db, scope,
        HistogramMetricFamily(
            "safehold_run_wait_seconds",
            "How long runs waited in the queue before a worker or agent started them",
            labels=["kind"],
        ),
        _histogram_sql("r.started_at - r.queued_at", "r.started_at IS NOT NULL"),
        WAIT_BUCKETS,
    )  # fmt: skip


def _slots(db: Connection, scope: Scope) -> Iterator[Metric]:
    rows = db.execute(
        text(
            "SELECT p.project, s.state, count(*) FROM slots s JOIN plans p ON p.id = s.plan_id "
            f"WHERE {_PROJECT} GROUP BY p.project, s.state"
        ),
        {"project": scope.project},
    ).all()
    found = {(project, state): n for project, state, n in rows}
    family = GaugeMetricFamily(
        "safehold_slots", "Ledger slots by project and state (missed: nothing ran them)",
        labels=["project", "state"],
    )  # fmt: skip
    # Every state of every project with a slot, zeros included: a series that vanished
    # could not be told from one that was never there.
    for project in sorted({p for p, _ in found}):
        for state in SlotState:
            family.add_metric([project, state.value], float(found.get((project, state.value), 0)))
    yield family


def _queue(db: Connection, scope: Scope) -> Iterator[Metric]:
    runs = db.execute(
        text(
            "SELECT r.kind, r.state, count(*), min(r.queued_at) FROM runs r "
            f"JOIN plans p ON p.id = r.plan_id WHERE r.state IN ('queued', 'running') "
            f"AND {_PROJECT} GROUP BY r.kind, r.state ORDER BY 1, 2"
        ),
        {"project": scope.project},
    ).all()
    active = GaugeMetricFamily(
        "safehold_runs_active", "Runs queued or running now, by kind and state",
        labels=["kind", "state"],
    )  # fmt: skip
    oldest = GaugeMetricFamily(
        "safehold_queue_oldest_wait_seconds",
        "How long the oldest run still queued has been waiting, by kind",
        labels=["kind"],
    )
    now = scope.now.timestamp() if scope.now else None
    for kind, state, n, first in runs:
        active.add_metric([kind, state], float(n))
        if state == "queued" and now is not None and first is not None:
            oldest.add_metric([kind], max(0.0, now - first.timestamp()))
    yield active
    yield oldest
    if scope.project is not None:
        return  # the job queue's names carry other projects' agents: all-projects only
    jobs = GaugeMetricFamily(
        "safehold_queue_jobs", "Jobs waiting in the job queue (procrastinate), by queue",
        labels=["queue"],
    )  # fmt: skip
    if db.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar() is not None:
        for queue, n in db.execute(
            text(
                "SELECT queue_name, count(*) FROM procrastinate_jobs WHERE status = 'todo' "
                "GROUP BY queue_name ORDER BY 1"
            )
        ).all():
            jobs.add_metric([queue], float(n))
    yield jobs


def _agents(db: Connection, scope: Scope) -> Iterator[Metric]:
    rows = db.execute(
        text(
            "SELECT p.project, count(*) FILTER (WHERE p.stopped_at IS NULL "
            "AND p.heartbeat_at > now() - make_interval(secs => :stall)), count(*) "
            f"FROM agents p WHERE {_PROJECT} GROUP BY p.project ORDER BY 1"
        ),
        {"project": scope.project, "stall": STALL_SECONDS},
    ).all()
    online = GaugeMetricFamily(
        "safehold_agents_online", "Agents that heart-beat within the stall window",
        labels=["project"],
    )  # fmt: skip
    known = GaugeMetricFamily(
        "safehold_agents", "Agents registered, online or not", labels=["project"]
    )
    for project, n_online, n in rows:
        online.add_metric([project], float(n_online))
        known.add_metric([project], float(n))
    yield online
    yield known
    if scope.project is None:
        workers = db.execute(
            text(
                "SELECT count(*) FROM workers WHERE stopped_at IS NULL "
                "AND heartbeat_at > now() - make_interval(secs => :stall)"
            ),
            {"stall": STALL_SECONDS},
        ).scalar_one()
        yield GaugeMetricFamily(
            "safehold_workers_online", "serve processes that heart-beat within the stall window",
            value=float(workers),
        )  # fmt: skip


@register_extension
def drill_metrics(db: Connection, scope: Scope) -> Iterator[Metric]:
    """The newest finished drill of each plan: when, whether it passed, its restore time
    and its target."""
    rows = db.execute(
        text(
            "SELECT DISTINCT ON (p.project, p.plan) p.project, p.plan, p.finished_at, p.result, "
            "p.restore_seconds, p.rto_target_seconds FROM drills p "
            f"WHERE p.finished_at IS NOT NULL AND {_PROJECT} "
            "ORDER BY p.project, p.plan, p.finished_at DESC"
        ),
        {"project": scope.project},
    ).all()
    last = GaugeMetricFamily(
        "safehold_plan_last_drill_timestamp_seconds", "When the plan's newest drill finished",
        labels=_PLAN_LABELS,
    )  # fmt: skip
    passed = GaugeMetricFamily(
        "safehold_plan_last_drill_passed", "1 if the plan's newest drill passed, else 0",
        labels=_PLAN_LABELS,
    )  # fmt: skip
    rto = GaugeMetricFamily(
        "safehold_plan_drill_restore_seconds",
        "The restore time (RTO) the plan's newest drill measured",
        labels=_PLAN_LABELS,
    )
    target = GaugeMetricFamily(
        "safehold_plan_drill_rto_target_seconds", "The plan's drill rto_target",
        labels=_PLAN_LABELS,
    )  # fmt: skip
    for row in rows:
        labels = [row.project, row.plan]
        last.add_metric(labels, row.finished_at.timestamp())
        passed.add_metric(labels, 1.0 if row.result == "passed" else 0.0)
        if row.restore_seconds is not None:
            rto.add_metric(labels, float(row.restore_seconds))
        if row.rto_target_seconds is not None:
            target.add_metric(labels, float(row.rto_target_seconds))
    yield from (last, passed, rto, target)


def coverage_metrics(db: Connection, scope: Scope) -> Iterator[Metric]:
    """Each verified repository's coverage (service/coverage.py): the share of its stored
    bytes re-read and found sound within its period, its damaged packs, its oldest read;
    and every repository's stored bytes (service/repository_bytes.py): its verification's
    where a slice listed the packs, else its newest backup's."""
    now = scope.now or utcnow()
    labels = ["repository"]
    found = coverages_on(db, scope.verify_periods, now) if scope.verify_periods else []
    stored = GaugeMetricFamily(
        "safehold_repository_stored_bytes",
        "Bytes in the repository's packs (compressed and sealed), as its last verification "
        "slice or else its newest backup found them",
        labels=labels,
    )
    for size in repository_bytes_on(db, scope.repositories, found, project=scope.project):
        stored.add_metric([size.repository], float(size.stored_bytes))
    if not scope.verify_periods:
        yield stored
        return
    ratio = GaugeMetricFamily(
        "safehold_repository_verification_coverage_ratio",
        "Share of the repository's stored bytes re-read and found sound within its period",
        labels=labels,
    )
    damaged = GaugeMetricFamily(
        "safehold_repository_damaged_packs", "Packs whose last read found damage", labels=labels
    )
    oldest = GaugeMetricFamily(
        "safehold_repository_oldest_pack_read_timestamp_seconds",
        "When the least recently re-read pack was last read",
        labels=labels,
    )
    for coverage in found:
        ratio.add_metric([coverage.repository], coverage.ratio)
        damaged.add_metric([coverage.repository], float(coverage.damaged_packs))
        if coverage.oldest_read is not None:
            oldest.add_metric([coverage.repository], coverage.oldest_read.timestamp())
    yield from (ratio, stored, damaged, oldest)
