"""The overview's data: a card per plan (RPO, last success, next slot, 30 days of slots,
the latest run's error) and the banner counting failing and at-risk plans.

Three catalog queries for the whole project, whatever its number of plans: the plans'
status (:func:`~safehold.service.queries.plan_status`), the slots of the last 30 days
summed per plan and day, and each plan's latest ended backup run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from sqlalchemy import Engine, text

from safehold.service.plans import PlanSpec
from safehold.service.queries import plan_status
from safehold.storage.location import redact
from safehold.web.format import duration, size
from safehold.web.svg import Cell

__all__ = ["DAYS", "Card", "Overview", "expected_interval", "overview"]

DAYS = 30
FAILED_STATES = ("failed", "timed_out", "worker_lost")
# The strip's colour for a day is its worst slot's: a failure is not hidden by a success.
_WORST = ("failed", "missed", "skipped", "running", "succeeded")


def expected_interval(spec: PlanSpec, now: datetime) -> float | None:
    """The plan's period in seconds: an ``@every`` schedule's, or the gap between a cron
    schedule's next two slots."""
    every = spec.schedule.interval
    if every is not None:
        return float(every)
    try:
        first = spec.schedule.next_after(now)
        return (spec.schedule.next_after(first) - first).total_seconds()
    except Exception:  # a schedule with no next slot (a date in the past)
        return None


def rpo_target(spec: PlanSpec, now: datetime) -> float | None:
    """The age past which a plan is at risk of missing its RPO.

    seam: issue 19 — ``rpo_target`` in the plan's document replaces this; until it exists
    the target is twice the schedule's period (one missed slot is allowed).
    """
    interval = expected_interval(spec, now)
    return None if interval is None else 2 * interval


@dataclass
class Card:
    """One plan on the overview."""

    name: str
    project: str
    kind: str  # the source's type ("directory", "postgres"...) or "prune"
    schedule: str
    paused: bool
    next_slot: datetime | None
    last_success: datetime | None
    rpo_seconds: float | None
    rpo_target: float | None
    state: str  # ok, failing, at_risk, paused, new
    last_run: dict[str, Any] | None
    cells: list[Cell] = field(default_factory=list)


@dataclass
class Overview:
    """The overview: the cards shown, the banner's counts, and the filters' choices."""

    cards: list[Card]
    failing: int
    at_risk: int
    total: int
    kinds: list[str]
    repositories: list[tuple[str, list[str]]]  # location (redacted) -> plans writing to it


_DAYS = text(
    """
    SELECT p.name, date_trunc('day', s.slot_at AT TIME ZONE 'UTC') AS day,
      count(*) FILTER (WHERE s.state = 'succeeded'),
      count(*) FILTER (WHERE s.state IN ('failed', 'timed_out')),
      count(*) FILTER (WHERE s.state = 'skipped'),
      count(*) FILTER (WHERE s.state = 'missed'),
      count(*) FILTER (WHERE s.state IN ('pending', 'queued', 'running')),
      sum(extract(epoch FROM r.ended_at - r.started_at)), sum(r.bytes_added)
    FROM slots s JOIN plans p ON p.id = s.plan_id LEFT JOIN runs r ON r.id = s.run_id
    WHERE p.project = :project AND s.slot_at >= :since
    GROUP BY 1, 2
    """
)

_LAST_RUN = text(
    """
    SELECT DISTINCT ON (r.plan_id) p.name, r.id, r.state, r.error, r.hint, r.ended_at
    FROM runs r JOIN plans p ON p.id = r.plan_id
    WHERE p.project = :project AND r.kind IN ('backup', 'prune') AND r.ended_at IS NOT NULL
    ORDER BY r.plan_id, r.ended_at DESC
    """
)


def source_kind(spec: PlanSpec) -> str:
    """What the plan backs up, for the filter: its source's ``type`` in the plan's file
    (``directory``, ``postgres``...), or ``prune`` for a repository's plan."""
    if spec.kind.value != "backup":
        return spec.kind.value
    return _file_types(spec.config_path).get(spec.name, "unknown")


_TYPES: dict[str, tuple[float, dict[str, str]]] = {}


def _file_types(path: str) -> dict[str, str]:
    """Each source's ``type`` in the file at ``path``, read again when the file changes.

    Only the types are read (plain YAML, no interpolation): the spec does not keep them,
    and loading the whole configuration would need its secrets' environment.
    """
    try:
        stamp = os.stat(path).st_mtime
    except OSError:
        return {}
    cached = _TYPES.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
        sources = document.get("sources") or {}
        found = {str(name): str(block.get("type", "unknown")) for name, block in sources.items()
                 if isinstance(block, dict)}  # fmt: skip
    except (OSError, yaml.YAMLError, AttributeError):
        found = {}
    _TYPES[path] = (stamp, found)
    return found


def _cells(days: dict[datetime, tuple[Any, ...]], now: datetime) -> list[Cell]:
    start = datetime(now.year, now.month, now.day) - timedelta(days=DAYS - 1)
    cells = []
    for i in range(DAYS):
        day = start + timedelta(days=i)
        row = days.get(day)
        if row is None:
            cells.append(Cell("none", f"{day:%Y-%m-%d}: no slot"))
            continue
        ok, failed, skipped, missed, running, seconds, added = row
        counts = {"succeeded": ok, "failed": failed, "skipped": skipped, "missed": missed,
                  "running": running}  # fmt: skip
        state = next(name for name in _WORST if counts[name]) if any(counts.values()) else "none"
        said = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
        title = f"{day:%Y-%m-%d}: {said}; {duration(seconds and float(seconds))}; "
        cells.append(Cell(state, title + f"{size(added and int(added))} added"))
    return cells


def overview(
    engine: Engine,
    specs: Mapping[str, PlanSpec],
    project: str,
    now: datetime,
    *,
    state: str | None = None,
    kind: str | None = None,
) -> Overview:
    """The project's overview at ``now``, its cards filtered by ``state`` and ``kind``
    (the banner counts every plan)."""
    mine = {key: spec for key, spec in specs.items() if spec.project == project}
    statuses = plan_status(engine, mine, now)
    since = now - timedelta(days=DAYS)
    days: dict[str, dict[datetime, tuple[Any, ...]]] = {}
    with engine.connect() as db:
        for row in db.execute(_DAYS, {"project": project, "since": since}):
            days.setdefault(row[0], {})[row[1]] = tuple(row[2:])
        last = {row[0]: dict(row._mapping) for row in db.execute(_LAST_RUN, {"project": project})}
    cards = []
    naive_now = now.astimezone(UTC).replace(tzinfo=None)
    for status in statuses:
        spec = mine[status.key]
        target = rpo_target(spec, now)
        rpo = status.rpo_seconds(now)
        run = last.get(spec.name)
        if status.paused:
            verdict = "paused"
        elif (run and run["state"] in FAILED_STATES) or status.last_state in (
            "failed",
            "timed_out",
        ):
            verdict = "failing"
        elif target is not None and rpo is not None and rpo > target:
            verdict = "at_risk"
        elif rpo is None:
            verdict = "new" if status.last_slot is None and run is None else "at_risk"
        else:
            verdict = "ok"
        cards.append(
            Card(
                name=spec.name, project=spec.project, kind=source_kind(spec),
                schedule=status.schedule, paused=status.paused, next_slot=status.next_slot,
                last_success=status.last_success, rpo_seconds=rpo, rpo_target=target,
                state=verdict, last_run=run, cells=_cells(days.get(spec.name, {}), naive_now),
            )
        )  # fmt: skip
    failing = sum(card.state == "failing" for card in cards)
    at_risk = sum(card.state == "at_risk" for card in cards)
    repositories: dict[str, list[str]] = {}
    for spec in mine.values():
        if spec.repository:
            repositories.setdefault(redact(spec.repository), []).append(spec.name)
    shown = [
        card for card in cards
        if (state is None or card.state == state) and (kind is None or card.kind == kind)
    ]  # fmt: skip
    return Overview(
        cards=shown, failing=failing, at_risk=at_risk, total=len(cards),
        kinds=sorted({card.kind for card in cards}),
        repositories=sorted((loc, sorted(names)) for loc, names in repositories.items()),
    )  # fmt: skip
