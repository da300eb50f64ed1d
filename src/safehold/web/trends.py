"""The drills page's charts: each plan's restore times (RTO) against its target, and each
repository's growth and deduplication over time.

Growth and deduplication come from the catalog's backup runs (``bytes_read``: what a
backup read of its source; ``bytes_added``: what it stored new), summed per day for the
project's plans and grouped by the repository each plan writes to (from the service's
plans: the catalog does not name repositories). "Size" is the data added, summed over
time: what backups stored, before compression savings are known and without what prune
later freed, so it is the repository's growth, not its size on disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from markupsafe import Markup
from sqlalchemy import Engine, text

from safehold.service.plans import PlanSpec
from safehold.storage.location import redact
from safehold.web import format as fmt
from safehold.web.svg import Bar, bar_chart

__all__ = ["RepoTrend", "repository_trends", "rto_charts"]

DAYS = 90  # of runs the repository charts show


@dataclass
class RepoTrend:
    """One repository's days: data added (summed over time) and read per day."""

    repository: str
    days: list[tuple[date, int, int]] = field(default_factory=list)  # (day, read, added)

    def charts(self) -> tuple[Markup, Markup]:
        """Growth (data added, summed) and the deduplication ratio (read / added), per day."""
        total = 0
        growth, ratio = [], []
        for day, read, added in self.days:
            total += added
            growth.append(Bar(float(total), f"{day}: {fmt.size(total)} added in all "
                              f"({fmt.size(added)} that day)"))  # fmt: skip
            dedup = read / added if added else 0.0
            ratio.append(Bar(dedup, f"{day}: {fmt.size(read)} read, {fmt.size(added)} "
                             f"stored new ({dedup:.1f}x)"))  # fmt: skip
        return (
            bar_chart(growth, label=f"data added to {self.repository} over time", unit="bytes"),
            bar_chart(ratio, label=f"deduplication of {self.repository}: bytes read per "
                      "byte stored, per day", unit="x"),
        )  # fmt: skip


def repository_trends(
    engine: Engine, plans: Mapping[str, PlanSpec], project: str, now: datetime
) -> list[RepoTrend]:
    """The project's repositories, each with its last :data:`DAYS` days of backups."""
    # A file plan's location is as written there, credentials and all: shown redacted.
    where = {key: redact(spec.repository) if spec.repository else "(the file's repository)"
             for key, spec in plans.items()
             if spec.project == project and spec.kind.value == "backup"}  # fmt: skip
    if not where:
        return []
    with engine.connect() as db:
        rows = db.execute(
            text(
                "SELECT p.name, date_trunc('day', r.ended_at)::date AS day, "
                "  coalesce(sum(r.bytes_read), 0), coalesce(sum(r.bytes_added), 0) "
                "FROM runs r JOIN plans p ON p.id = r.plan_id "
                "WHERE p.project = :p AND r.kind = 'backup' AND r.state = 'succeeded' "
                "  AND r.ended_at > :since "
                "GROUP BY p.name, day ORDER BY day"
            ),
            {"p": project, "since": now - timedelta(days=DAYS)},
        ).all()
    by_repo: dict[str, dict[date, list[int]]] = {}
    for name, day, read, added in rows:
        repo = where.get(f"{project}/{name}")
        if repo is None:
            continue
        sums = by_repo.setdefault(repo, {}).setdefault(day, [0, 0])
        sums[0] += int(read)
        sums[1] += int(added)
    return [RepoTrend(repo, [(d, r, a) for d, (r, a) in sorted(days.items())])
            for repo, days in sorted(by_repo.items())]  # fmt: skip


def rto_charts(drills: Iterable[Any]) -> list[tuple[str, Markup]]:
    """Per plan, its drills' restore times oldest first, the RTO target as a line (the
    newest drill's), over-target drills marked."""
    by_plan: dict[str, list[Any]] = {}
    for d in drills:
        if d.restore_seconds is not None:
            by_plan.setdefault(d.plan, []).append(d)
    out = []
    for plan, found in sorted(by_plan.items()):
        found.sort(key=lambda d: d.started_at)
        target = found[-1].rto_target_seconds
        bars: Sequence[Bar] = [
            Bar(float(d.restore_seconds), f"{fmt.when(d.started_at)}: restored in "
                f"{fmt.duration(d.restore_seconds)} ({d.result})",
                "over" if d.over_target else ("failed" if d.result == "failed" else "succeeded"))
            for d in found
        ]  # fmt: skip
        label = f"restore times of {plan}'s drills, oldest first"
        if target:
            label += f", against a target of {fmt.duration(target)}"
        title = f"RTO target {fmt.duration(target)}"
        chart = bar_chart(bars, label=label, unit="s", target=target, target_title=title)
        out.append((plan, chart))
    return out
