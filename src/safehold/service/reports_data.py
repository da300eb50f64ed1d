"""What a project's report says, read from the catalog: its plans' runs, RPO and storage
over one period, and its drills and verification coverage where they are known. Its usage
is the stored size of the repositories its plans write to where the catalog knows it
(:mod:`.repository_bytes`), else the new data of its kept restore points.

:func:`gather` returns plain data (:class:`ReportData`); :mod:`.reports_render` turns it
into HTML and a summary. Sections whose source does not exist yet are ``None`` and are
left out of the report: the drills (none ran in the period) and the verification coverage (no
repository of the project's with a ``verify:`` block).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from safehold.service.coverage import coverages_on
from safehold.service.metrics_targets import Targets, seconds
from safehold.service.repository_bytes import RepositoryBytes, repository_bytes_on

__all__ = [
    "FAILED_STATES",
    "MAX_RUNS",
    "CoverageRow",
    "DrillRow",
    "PlanStatus",
    "ReportData",
    "RunRow",
    "gather",
]

MAX_RUNS = 500  # runs listed in one report (the counts cover them all)
FAILED_STATES = ("failed", "timed_out", "worker_lost")


@dataclass(frozen=True)
class RunRow:
    """One run of the period."""

    plan: str
    kind: str
    state: str
    queued_at: datetime
    seconds: float | None  # how long it ran (None: it did not start or has not ended)
    error: str | None

    @property
    def failed(self) -> bool:
        """Whether it ended in failure (failed, timed out, its worker lost)."""
        return self.state in FAILED_STATES


@dataclass(frozen=True)
class PlanStatus:
    """One plan's period: its runs, its newest restore point against its RPO target, and
    what it stored."""

    name: str
    paused: bool
    succeeded: int
    failed: int
    last_success: datetime | None
    newest_point: datetime | None
    rpo_seconds: float | None  # the newest point's age at the report's time
    rpo_target: float | None
    points_new: int  # restore points taken in the period
    bytes_added: int  # new data its backups added in the period
    stored_bytes: int  # new data of its restore points still kept
    repository: str | None = None  # where it writes (its location without credentials)

    @property
    def rpo_status(self) -> str:
        """``ok``, ``breach`` (older than the target), ``none`` (no restore point at all)
        or ``no target``."""
        if self.rpo_seconds is None:
            return "none"
        if self.rpo_target is None:
            return "no target"
        return "breach" if self.rpo_seconds > self.rpo_target else "ok"


@dataclass(frozen=True)
class DrillRow:
    """One drill of the period (the ``drills`` table)."""

    plan: str
    started_at: datetime
    result: str
    restore_seconds: float | None
    rto_target_seconds: float | None
    snapshot_id: str | None
    error: str | None

    @property
    def over_target(self) -> bool:
        """Whether the measured restore took longer than the plan's target."""
        return (
            self.restore_seconds is not None
            and self.rto_target_seconds is not None
            and self.restore_seconds > self.rto_target_seconds
        )


@dataclass(frozen=True)
class CoverageRow:
    """One repository's verification coverage: the share of its stored bytes re-read
    within its period."""

    repository: str
    coverage: float  # 0.0 .. 1.0
    period_seconds: float | None = None


@dataclass(frozen=True)
class ReportData:
    """Everything one report shows."""

    project: str
    period_start: datetime
    period_end: datetime
    generated_at: datetime
    plans: list[PlanStatus]
    runs: list[RunRow]
    runs_total: int
    drills: list[DrillRow] | None = None
    coverage: list[CoverageRow] | None = None
    quota_bytes: int | None = None  # no quota is kept yet: "not known"
    # The repositories whose stored size is known (None: none is).
    repositories: list[RepositoryBytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        """Runs of the period that succeeded."""
        return sum(p.succeeded for p in self.plans)

    @property
    def failed(self) -> int:
        """Runs of the period that failed, timed out or lost their worker."""
        return sum(p.failed for p in self.plans)

    @property
    def stored_bytes(self) -> int:
        """The project's usage: the stored size of each repository its plans write to
        where it is known (a repository shared with other projects counts whole), plus
        the new data of the kept restore points of its plans whose repository's size is
        not known."""
        known = {r.repository: r.stored_bytes for r in self.repositories or ()}
        mine = {p.repository for p in self.plans if p.repository in known}
        return sum(known[r] for r in mine if r is not None) + sum(
            p.stored_bytes for p in self.plans if p.repository not in known
        )

    @property
    def added_bytes(self) -> int:
        """The storage growth of the period: new data its backups added."""
        return sum(p.bytes_added for p in self.plans)

    @property
    def breaches(self) -> list[str]:
        """The plans whose newest restore point is older than their RPO target."""
        return [p.name for p in self.plans if p.rpo_status == "breach"]

    def summary(self) -> dict[str, Any]:
        """The report in a few numbers (the log line, ``report --json``)."""
        found: dict[str, Any] = {
            "project": self.project,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "plans": len(self.plans),
            "runs_succeeded": self.succeeded,
            "runs_failed": self.failed,
            "rpo_breached": self.breaches,
            "stored_bytes": self.stored_bytes,
            "added_bytes": self.added_bytes,
        }
        if self.drills is not None:
            found["drills_passed"] = sum(d.result == "passed" for d in self.drills)
            found["drills_failed"] = sum(d.result == "failed" for d in self.drills)
        if self.coverage is not None:
            found["coverage"] = {c.repository: c.coverage for c in self.coverage}
        if self.repositories is not None:
            found["repository_bytes"] = {r.repository: r.stored_bytes for r in self.repositories}
        return found


def gather(
    engine: Engine,
    project: str,
    start: datetime,
    end: datetime,
    *,
    now: datetime,
    rpo_targets: Targets | None = None,
    verify_periods: Mapping[str, str] | None = None,
    repositories: Mapping[str, str] | None = None,
) -> ReportData:
    """The report of ``project`` for ``[start, end)``, its RPO ages taken at ``now``;
    ``rpo_targets`` (by plan key) win over the catalog's settings; ``verify_periods``
    (``repository -> period``: :func:`~safehold.service.coverage.verify_periods`) are the
    repositories whose verification coverage it shows (none: no such section);
    ``repositories`` (``plan key -> repository`` of the running service's backup plans:
    :func:`~safehold.service.repository_bytes.plan_repositories`) where each plan writes,
    for the usage (none: the new data of the kept restore points)."""
    params = {"p": project, "s": start, "e": end}
    where = repositories or {}
    with engine.connect() as db:
        db.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        plans = _plans(db, params, now, rpo_targets or {}, where)
        runs = [
            RunRow(r.plan, r.kind, r.state, r.queued_at, r.seconds, r.error)
            for r in db.execute(_RUNS, {**params, "limit": MAX_RUNS}).all()
        ]
        total = db.execute(_RUN_COUNT, params).scalar_one()
        drills = _drills(db, params)
        coverages = coverages_on(db, verify_periods or {}, now)
        coverage = [CoverageRow(c.repository, c.ratio) for c in coverages] or None
        sizes = repository_bytes_on(db, where, coverages, project=project) or None
    return ReportData(project, start, end, now, plans, runs, total, drills, coverage,
                      repositories=sizes)  # fmt: skip


def _plans(
    db: Connection,
    params: dict[str, Any],
    now: datetime,
    targets: Targets,
    repositories: Mapping[str, str],
) -> list[PlanStatus]:
    found = []
    for r in db.execute(_PLANS, params).all():
        newest = r.newest_point
        found.append(
            PlanStatus(
                name=r.name,
                paused=r.paused,
                succeeded=r.succeeded,
                failed=r.failed,
                last_success=r.last_success,
                newest_point=newest,
                rpo_seconds=None if newest is None else max(0.0, (now - newest).total_seconds()),
                rpo_target=targets.get(f"{params['p']}/{r.name}", seconds(r.rpo_target)),
                points_new=r.points_new,
                bytes_added=int(r.bytes_added),
                stored_bytes=int(r.stored_bytes),
                repository=repositories.get(f"{params['p']}/{r.name}"),
            )
        )
    return found


def _drills(db: Connection, params: dict[str, Any]) -> list[DrillRow] | None:
    """The period's drills of the project; None (no section) when none ran."""
    rows = db.execute(
        text(
            "SELECT plan, started_at, result, restore_seconds, rto_target_seconds, "
            "snapshot_id, error FROM drills WHERE project = :p AND started_at >= :s "
            "AND started_at < :e ORDER BY started_at DESC LIMIT 200"
        ),
        params,
    ).all()
    return [DrillRow(*row) for row in rows] or None


_FAILED = "('failed', 'timed_out', 'worker_lost')"
_PLANS = text(
    "SELECT p.name, p.paused, p.settings->>'rpo_target' AS rpo_target, "
    "  coalesce(r.succeeded, 0) AS succeeded, coalesce(r.failed, 0) AS failed, "
    "  (SELECT max(x.ended_at) FROM runs x WHERE x.plan_id = p.id AND x.kind = 'backup' "
    "   AND x.state = 'succeeded' AND x.ended_at < :e) AS last_success, "
    "  (SELECT max(rp.taken_at) FROM restore_points rp WHERE rp.plan_id = p.id "
    "   AND rp.forgotten_at IS NULL) AS newest_point, "
    "  (SELECT count(*) FROM restore_points rp WHERE rp.plan_id = p.id "
    "   AND rp.taken_at >= :s AND rp.taken_at < :e) AS points_new, "
    "  coalesce(r.added, 0) AS bytes_added, "
    "  (SELECT coalesce(sum(rp.bytes_added), 0) FROM restore_points rp "
    "   WHERE rp.plan_id = p.id AND rp.forgotten_at IS NULL) AS stored_bytes "
    "FROM plans p LEFT JOIN ("
    "  SELECT plan_id, count(*) FILTER (WHERE state = 'succeeded') AS succeeded, "
    f"   count(*) FILTER (WHERE state IN {_FAILED}) AS failed, "
    "   coalesce(sum(bytes_added) FILTER (WHERE state = 'succeeded' AND kind = 'backup'), 0) "
    "   AS added "
    "  FROM runs WHERE queued_at >= :s AND queued_at < :e GROUP BY plan_id"
    ") r ON r.plan_id = p.id WHERE p.project = :p ORDER BY p.name"
)
_RUNS = text(
    "SELECT p.name AS plan, r.kind, r.state, r.queued_at, "
    "  extract(epoch FROM r.ended_at - r.started_at)::float AS seconds, r.error "
    "FROM runs r JOIN plans p ON p.id = r.plan_id "
    "WHERE p.project = :p AND r.queued_at >= :s AND r.queued_at < :e "
    # Failures first: a long period's list is cut at MAX_RUNS, and they must stay in it.
    f"ORDER BY (r.state IN {_FAILED}) DESC, r.queued_at DESC LIMIT :limit"
)
_RUN_COUNT = text(
    "SELECT count(*) FROM runs r JOIN plans p ON p.id = r.plan_id "
    "WHERE p.project = :p AND r.queued_at >= :s AND r.queued_at < :e"
)
