"""Verification coverage: the share of a repository's stored bytes re-read within its period.

Computed from the rotation (``verify_packs``, :mod:`.verify`) as the last slice listed
it: ``bytes_read_within_period / bytes_total``, where a pack counts when a slice read it
less than ``period`` ago and found it sound. A repository whose slices keep up stays at
1.0; a never-read pack, a pack last read too long ago or a damaged pack lowers it. The
command line (``safehold verify --status``), the REST API, the metrics and the reports
all read it through :func:`coverage` or :func:`coverages`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from safehold.catalog import RunKind
from safehold.policy.duration import Duration, parse_duration
from safehold.service.plans import PlanSpec

__all__ = ["Coverage", "coverage", "coverages", "coverages_on", "verify_periods"]


@dataclass(frozen=True)
class Coverage:
    """One repository's verification coverage at ``at``."""

    repository: str  # its location without credentials (its verify plan's name)
    period: str  # as configured: "30d"
    at: datetime
    packs: int
    bytes_total: int
    bytes_read_within_period: int  # in packs read sound less than ``period`` ago
    oldest_read: datetime | None  # the oldest last read of a pack (None: none read yet)
    never_read: int  # packs no slice has read yet
    damaged_packs: int  # packs whose last read found damage

    @property
    def ratio(self) -> float:
        """``bytes_read_within_period / bytes_total``; 1.0 for an empty repository."""
        if self.bytes_total <= 0:
            return 1.0
        return self.bytes_read_within_period / self.bytes_total

    def to_json(self) -> dict[str, Any]:
        """The coverage as ``verify --status --json`` and the API give it."""
        return {
            "repository": self.repository,
            "period": self.period,
            "at": self.at.isoformat(),
            "packs": self.packs,
            "bytes_total": self.bytes_total,
            "bytes_read_within_period": self.bytes_read_within_period,
            "coverage": self.ratio,
            "oldest_read": self.oldest_read.isoformat() if self.oldest_read else None,
            "never_read": self.never_read,
            "damaged_packs": self.damaged_packs,
        }


_COVERAGE = text(
    """
    SELECT count(*), coalesce(sum(size), 0),
      coalesce(sum(size) FILTER (WHERE last_read > :since AND last_result = 'ok'), 0),
      min(last_read),
      count(*) FILTER (WHERE last_read IS NULL),
      count(*) FILTER (WHERE last_result = 'damaged')
    FROM verify_packs WHERE repository = :repo
    """
)


def coverage(engine: Engine, repository: str, period: str | Duration, now: datetime) -> Coverage:
    """The coverage of ``repository`` (its redacted location, as its verify plan names
    it) over ``period`` (``"30d"`` or a :class:`~safehold.policy.Duration`) at ``now``."""
    with engine.connect() as db:
        return _measure(db, repository, period, now)


def _measure(db: Connection, repository: str, period: str | Duration, now: datetime) -> Coverage:
    span = parse_duration(period) if isinstance(period, str) else period
    packs, total, within, oldest, never, damaged = db.execute(
        _COVERAGE, {"repo": repository, "since": span.subtract_from(now)}
    ).one()
    return Coverage(
        repository=repository,
        period=period if isinstance(period, str) else str(period),
        at=now,
        packs=int(packs),
        bytes_total=int(total),
        bytes_read_within_period=int(within),
        oldest_read=oldest,
        never_read=int(never),
        damaged_packs=int(damaged),
    )


def coverages(engine: Engine, specs: Mapping[str, PlanSpec], now: datetime) -> list[Coverage]:
    """The coverage of every repository with a verify plan among ``specs`` (the service's
    plans), sorted by repository."""
    with engine.connect() as db:
        return coverages_on(db, verify_periods(specs.values()), now)


def verify_periods(specs: Iterable[PlanSpec], project: str | None = None) -> dict[str, str]:
    """``repository -> period`` of the repositories with a verify plan among ``specs``;
    with ``project``, only those a plan of that project writes to (a repository's
    location, without credentials, is no secret to those who back up into it, and is not
    shown to anyone else)."""
    specs = list(specs)
    mine = {
        spec.repository
        for spec in specs
        if spec.kind is not RunKind.VERIFY and (project is None or spec.project == project)
    }
    return {
        spec.name: spec.verify_period or "30d"
        for spec in specs
        if spec.kind is RunKind.VERIFY and (project is None or spec.repository in mine)
    }


def coverages_on(db: Connection, periods: Mapping[str, str], now: datetime) -> list[Coverage]:
    """The coverage of each repository of ``periods`` (``repository -> period``), on the
    caller's connection, sorted by repository."""
    return [_measure(db, repo, periods[repo], now) for repo in sorted(periods)]
