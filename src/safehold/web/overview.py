"""The overview's data: the banner counting failing and at-risk plans, and a card per
plan (RPO, last success, next slot, 30 days of slots, the latest run's error), a page of
cards at a time, over one or several projects (a browser session holds a token of each).

Two catalog queries whatever the project's size: every plan's status (its newest slot,
newest success and newest ended run, each one index probe), then the slots of the last 30
days of the page's plans, summed per plan and day; with several projects, the first is
one query per project (the same query, the same index). The banner counts every plan;
the cards' costlier parts (next slot, strip) are made for the page shown only, so the
overview of 1,000 plans answers as fast as one of 50 (bench/web.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from sqlalchemy import Connection, Engine, text

from safehold.catalog import RunKind
from safehold.service.plans import PlanSpec
from safehold.storage.location import redact
from safehold.web.format import duration, size
from safehold.web.svg import Cell

__all__ = ["DAYS", "PAGE", "Card", "Overview", "expected_interval", "overview", "rpo_target"]

DAYS = 30
PAGE = 60  # cards a page: failing first, then at risk, then by name
FAILED_STATES = ("failed", "timed_out", "worker_lost")
# The strip's colour for a day is its worst slot's: a failure is not hidden by a success.
_NAMES = ("succeeded", "failed", "skipped", "missed", "running")  # the query's count columns
_RANK = (1, 3, 2, 4, 0)  # failed, missed, skipped, running, succeeded


_INTERVALS: dict[tuple[str, str, str], float | None] = {}


def expected_interval(spec: PlanSpec, now: datetime) -> float | None:
    """The plan's period in seconds: an ``@every`` schedule's, or the gap between a cron
    schedule's next two slots (found once per schedule: a search costs a croniter walk)."""
    every = spec.schedule.interval
    if every is not None:
        return float(every)
    key = (spec.schedule.expression, spec.schedule.key, spec.schedule.timezone)
    if key not in _INTERVALS:
        if len(_INTERVALS) > 100_000:
            _INTERVALS.clear()
        try:
            first = spec.schedule.next_after(now)
            _INTERVALS[key] = (spec.schedule.next_after(first) - first).total_seconds()
        except Exception:  # a schedule with no next slot (a date in the past)
            _INTERVALS[key] = None
    return _INTERVALS[key]


def rpo_target(spec: PlanSpec, now: datetime) -> float | None:
    """The age past which a plan is at risk of missing its RPO: its ``rpo_target``, or
    without one twice the schedule's period (one missed slot is allowed)."""
    if spec.rpo_target is not None:
        return spec.rpo_target
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
    last_success: datetime | None
    rpo_seconds: float | None
    rpo_target: float | None
    state: str  # ok, failing, at_risk, paused, new
    last_run: dict[str, Any] | None
    next_slot: datetime | None = None  # made for the page's cards only
    last_drill: dict[str, Any] | None = None  # likewise
    cells: list[Cell] = field(default_factory=list)  # likewise


@dataclass
class Overview:
    """The overview: the page's cards, the banner's counts, the filters' choices."""

    cards: list[Card]
    failing: int
    at_risk: int
    total: int
    matching: int  # cards the filters keep, over every page
    page: int
    pages: int
    kinds: list[str]
    # location (redacted) -> the plans writing to it, as (project, name)
    repositories: list[tuple[str, list[tuple[str, str]]]]


_STATUS = text(
    """
    SELECT p.id, p.name, p.paused, p.created_at, s.state AS slot_state, s.slot_at,
      CASE WHEN r.state = 'succeeded' THEN r.ended_at ELSE
        (SELECT ended_at FROM runs WHERE plan_id = p.id AND kind IN ('backup', 'prune')
           AND state = 'succeeded' ORDER BY queued_at DESC LIMIT 1) END AS success,
      r.id AS run_id, r.state AS run_state, r.error, r.hint, r.ended_at AS run_ended
    FROM plans p
    LEFT JOIN LATERAL (SELECT state, slot_at FROM slots WHERE plan_id = p.id
                       ORDER BY slot_at DESC LIMIT 1) s ON TRUE
    LEFT JOIN LATERAL (SELECT id, state, error, hint, ended_at FROM runs WHERE plan_id = p.id
                         AND kind IN ('backup', 'prune') AND ended_at IS NOT NULL
                       ORDER BY queued_at DESC LIMIT 1) r ON TRUE
    WHERE p.project = :project
    """
)
# The newest success is looked for only when the newest ended run is not one: a succeeded
# run has ended, so the newest ended run, when it succeeded, is the newest success too
# (CASE runs its subquery for the other plans only, a third of the probes saved).

_LAST_DRILLS = text(
    """
    SELECT DISTINCT ON (plan) plan, result, finished_at, restore_seconds, rto_target_seconds
    FROM drills WHERE project = :project AND plan = ANY(:plans) AND finished_at IS NOT NULL
    ORDER BY plan, finished_at DESC
    """
)

_DAYS = text(
    """
    SELECT s.plan_id, date_trunc('day', s.slot_at AT TIME ZONE 'UTC') AS day,
      count(*) FILTER (WHERE s.state = 'succeeded'),
      count(*) FILTER (WHERE s.state IN ('failed', 'timed_out')),
      count(*) FILTER (WHERE s.state = 'skipped'),
      count(*) FILTER (WHERE s.state = 'missed'),
      count(*) FILTER (WHERE s.state IN ('pending', 'queued', 'running')),
      sum(r.seconds), sum(r.bytes_added)
    FROM slots s
    LEFT JOIN LATERAL (SELECT extract(epoch FROM ended_at - started_at) AS seconds, bytes_added
                       FROM runs WHERE id = s.run_id OFFSET 0) r ON TRUE
    WHERE s.plan_id = ANY(:ids) AND s.slot_at >= :since
    GROUP BY 1, 2
    """
)
# ``OFFSET 0`` keeps the runs a probe of their primary key per slot (1,800 for a page):
# as a plain join the planner chose, by turns, a parallel plan (a worker's start costs
# more than the query on a busy machine) and a hash join over every run (a year: 350,000).


def source_kind(spec: PlanSpec, seen: dict[str, dict[str, str]] | None = None) -> str:
    """What the plan backs up, for the filter: its source's ``type`` in the plan's file
    (``directory``, ``postgres``...), or ``prune`` for a repository's plan. ``seen``
    keeps each file's types for one page (one ``stat`` per file, not per plan)."""
    if spec.kind.value != "backup":
        return spec.kind.value
    if seen is None:
        return _file_types(spec.config_path).get(spec.name, "unknown")
    types = seen.get(spec.config_path)
    if types is None:
        types = seen[spec.config_path] = _file_types(spec.config_path)
    return types.get(spec.name, "unknown")


_TYPES: dict[str, tuple[float, dict[str, str]]] = {}
# libyaml's safe loader when PyYAML has it: the first overview after a change of a file of
# 1,000 plans reads it in 60 ms rather than 400.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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
            document = yaml.load(f, Loader=_LOADER)
        sources = document.get("sources") or {}
        found = {str(name): str(block.get("type", "unknown")) for name, block in sources.items()
                 if isinstance(block, dict)}  # fmt: skip
    except (OSError, yaml.YAMLError, AttributeError):
        found = {}
    _TYPES[path] = (stamp, found)
    return found


def _cells(days: dict[datetime, tuple[Any, ...]], window: list[tuple[datetime, str]]) -> list[Cell]:
    cells = []
    for day, label in window:
        row = days.get(day)
        if row is None:
            cells.append(Cell("none", f"{label}: no slot"))
            continue
        ok, failed, skipped, missed, running, seconds, added = row
        counts = (ok, failed, skipped, missed, running)
        said = ", ".join(f"{n} {_NAMES[i]}" for i, n in enumerate(counts) if n)
        state = next((_NAMES[i] for i in _RANK if counts[i]), "none")
        cells.append(Cell(state, f"{label}: {said}; {duration(seconds and float(seconds))}; "
                                 f"{size(added and int(added))} added"))  # fmt: skip
    return cells


def _verdict(paused: bool, row: Any, rpo: float | None, target: float | None, now: datetime) -> str:
    if paused:
        return "paused"
    if row is not None and (
        row.run_state in FAILED_STATES or row.slot_state in ("failed", "timed_out")
    ):
        return "failing"
    if rpo is None:
        never = row is None or (row.slot_at is None and row.run_id is None)
        # A plan that never ran is new until it has existed longer than its target: then
        # it is at risk, as the RPO alert says (which counts from the plan's creation).
        young = row is None or target is None or (now - row.created_at).total_seconds() <= target
        return "new" if never and young else "at_risk"
    return "at_risk" if target is not None and rpo > target else "ok"


_ORDER = {"failing": 0, "at_risk": 1, "new": 2, "ok": 3, "paused": 4}


Key = tuple[str, str]  # a plan's (project, name): names are unique per project only


def overview(
    engine: Engine,
    specs: Mapping[str, PlanSpec],
    projects: str | Sequence[str],
    now: datetime,
    *,
    state: str | None = None,
    kind: str | None = None,
    project: str | None = None,
    page: int = 1,
) -> Overview:
    """The overview of ``projects`` (one, or the session's) at ``now``: the banner over
    every plan of them, and the ``page``-th page of the cards that ``project``, ``state``
    and ``kind`` keep (failing first, then at risk)."""
    names = [projects] if isinstance(projects, str) else list(projects)
    wanted = set(names)
    # A drill plan (``NAME.drill``) is shown on its source's card, not as one of its own.
    mine = {
        (spec.project, spec.name): spec
        for spec in specs.values()
        if spec.project in wanted and spec.kind is not RunKind.DRILL
    }
    # One connection for the page's queries: each checkout costs the pool's ping and its
    # rollback on return, round trips that a busy machine makes slow.
    with engine.connect() as db:
        rows: dict[Key, Any] = {}
        for one in names:
            for row in db.execute(_STATUS, {"project": one}).all():
                rows[one, row.name] = row
        return _assemble(db, mine, rows, now, state=state, kind=kind, project=project,
                         page=page)  # fmt: skip


def _assemble(
    db: Connection, mine: Mapping[Key, PlanSpec], rows: Mapping[Key, Any], now: datetime,
    *, state: str | None, kind: str | None, project: str | None, page: int,
) -> Overview:  # fmt: skip
    """The cards from the plans' status ``rows``, the banner's counts, the page filled.

    Every plan gets a verdict and a kind (the banner and the filters need them); only the
    page's plans become cards (1,000 plans: 60 cards, not 1,000 made and dropped)."""
    seen: dict[str, dict[str, str]] = {}
    # (order, name, project, verdict, kind, paused, success, rpo, target) for every plan
    plans: list[
        tuple[int, str, str, str, str, bool, datetime | None, float | None, float | None]
    ] = []
    for key, spec in mine.items():
        row = rows.get(key)
        paused = spec.paused or bool(row is not None and row.paused)
        success = row.success if row is not None else None
        rpo = None if success is None else (now - success).total_seconds()
        target = rpo_target(spec, now)
        verdict = _verdict(paused, row, rpo, target, now)
        plans.append((_ORDER.get(verdict, 9), key[1], key[0], verdict,
                      source_kind(spec, seen), paused, success, rpo, target))  # fmt: skip
    failing = sum(plan[3] == "failing" for plan in plans)
    at_risk = sum(plan[3] == "at_risk" for plan in plans)
    kept = sorted(
        plan for plan in plans
        if (state is None or plan[3] == state) and (kind is None or plan[4] == kind)
        and (project is None or plan[2] == project)
    )  # fmt: skip
    pages = max(1, -(-len(kept) // PAGE))
    page = min(max(1, page), pages)
    shown: list[Card] = []
    ids: dict[Key, int] = {}
    for _, name, owner, verdict, source, paused, success, rpo, target in kept[
        (page - 1) * PAGE : page * PAGE
    ]:  # (name, project) is unique: the sort never compares past them
        row = rows.get((owner, name))
        run = None
        if row is not None:
            ids[owner, name] = row.id
            if row.run_id is not None:
                run = {"id": str(row.run_id), "state": row.run_state, "error": row.error,
                       "hint": row.hint, "ended_at": row.run_ended}  # fmt: skip
        shown.append(
            Card(
                name=name, project=owner, kind=source,
                schedule=mine[owner, name].schedule.describe(), paused=paused,
                last_success=success, rpo_seconds=rpo, rpo_target=target, state=verdict,
                last_run=run,
            )
        )  # fmt: skip
    _fill_page(db, shown, mine, ids, now)
    repositories: dict[str, list[Key]] = {}
    for key, spec in mine.items():
        if spec.repository and (project is None or key[0] == project):
            repositories.setdefault(redact(spec.repository), []).append(key)
    return Overview(
        cards=shown, failing=failing, at_risk=at_risk, total=len(plans), matching=len(kept),
        page=page, pages=pages, kinds=sorted({plan[4] for plan in plans}),
        repositories=sorted((loc, sorted(keys)) for loc, keys in repositories.items()),
    )  # fmt: skip


def _fill_page(
    db: Connection, cards: list[Card], specs: Mapping[Key, PlanSpec], ids: Mapping[Key, int],
    now: datetime,
) -> None:  # fmt: skip
    """The page's cards' next slots and strips."""
    wanted = [ids[card.project, card.name] for card in cards if (card.project, card.name) in ids]
    days: dict[int, dict[datetime, tuple[Any, ...]]] = {}
    if wanted:
        since = now - timedelta(days=DAYS)
        for row in db.execute(_DAYS, {"ids": wanted, "since": since}).all():
            days.setdefault(row[0], {})[row[1]] = tuple(row[2:])
    today = now.astimezone(UTC).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    window = [(day, f"{day:%Y-%m-%d}") for day in
              (today - timedelta(days=DAYS - 1 - i) for i in range(DAYS))]  # fmt: skip
    drills: dict[Key, dict[str, Any]] = {}
    by_project: dict[str, list[str]] = {}
    for card in cards:
        by_project.setdefault(card.project, []).append(card.name)
    for owner, plans in by_project.items():  # one query a project shown (one, mostly)
        last = db.execute(_LAST_DRILLS, {"project": owner, "plans": plans}).all()
        drills.update({(owner, row.plan): dict(row._mapping) for row in last})
    for card in cards:
        key = (card.project, card.name)
        if not card.paused:
            card.next_slot = specs[key].schedule.next_after(now)
        card.cells = _cells(days.get(ids.get(key, -1), {}), window)
        card.last_drill = drills.get(key)
