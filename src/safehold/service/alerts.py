"""The alert engine: incidents opened, told once, resolved, from what the catalog says.

Each **evaluation** (every ``alerts.evaluate_every`` seconds in ``safehold serve``):

1. takes a transaction-level advisory lock without waiting, as the tick does: when
   several services share a database, one evaluates and the others skip their turn;
2. runs every condition (:data:`~.alerts_conditions.CONDITIONS`), each reporting what is
   wrong now as :class:`~.alerts_conditions.Finding` s keyed (kind, project, plan,
   subject);
3. opens an incident for each new key and queues one ``opened`` message per channel of
   every receiver of the project; a key that is still found changes nothing (no repeats,
   however many evaluations see it); an open incident no condition reports any more is
   resolved and a ``resolved`` message queued. When a condition fails to run, nothing is
   resolved in that evaluation (its incidents are not known to have cleared).

All of that is one transaction, and the messages are rows of an **outbox**
(``alert_deliveries``) written in it: an incident is never open without its messages
queued, nor told twice. :mod:`.alerts_delivery` sends them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from safehold.config.alerts import AlertsConfig
from safehold.service.alerts_conditions import CONDITIONS, Condition, EvalContext, Finding

__all__ = ["ALERT_LOCK", "EvalResult", "evaluate", "incidents_list", "queue_messages"]

log = logging.getLogger("safehold.service.alerts")

# "safealrt" in ASCII, top bit cleared: the advisory lock of the evaluating process.
ALERT_LOCK = 0x73616665_616C7274


@dataclass
class EvalResult:
    """What one evaluation did; ``evaluated`` is False when another process held the lock."""

    evaluated: bool
    opened: list[Finding] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)  # incident ids
    failed_conditions: list[str] = field(default_factory=list)


_OPEN = text(
    """
    INSERT INTO incidents (kind, project, plan, subject, open_key, state, opened_at, run_id,
                           phase, error, hint, details)
    VALUES (:kind, :project, :plan, :subject, :key, 'open', :now, :run_id, :phase, :error,
            :hint, CAST(:details AS jsonb))
    ON CONFLICT (open_key) DO NOTHING RETURNING id
    """
)


def queue_messages(
    db: Connection, alerts: AlertsConfig | None, incident_id: int, project: str, event: str,
    now: Any,
) -> int:  # fmt: skip
    """Queue ``event`` of an incident for every channel of every receiver of ``project``;
    how many rows."""
    rows = [
        {"i": incident_id, "e": event, "r": name, "c": channel, "now": now}
        for name, receiver in (alerts.receivers.items() if alerts else [])
        if receiver.covers(project)
        for channel, _ in receiver.named_channels()
    ]
    if rows:
        db.execute(
            text(
                "INSERT INTO alert_deliveries (incident_id, event, receiver, channel, next_at) "
                "VALUES (:i, :e, :r, :c, :now)"
            ),
            rows,
        )
    return len(rows)


def evaluate(
    engine: Engine,
    alerts: AlertsConfig | None,
    ctx: EvalContext,
    conditions: Sequence[Condition] = CONDITIONS,
) -> EvalResult:
    """One evaluation (see the module); incidents are recorded even with no receivers."""
    with engine.begin() as db:
        got = db.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ALERT_LOCK})
        if not got.scalar():
            return EvalResult(evaluated=False)
        result = EvalResult(evaluated=True)
        found: dict[str, Finding] = {}
        for condition in conditions:
            try:
                with db.begin_nested():  # a failing condition leaves the others' work intact
                    for finding in condition(db, ctx):
                        found.setdefault(finding.key, finding)
            except Exception as exc:
                name = getattr(condition, "__name__", repr(condition))
                result.failed_conditions.append(name)
                log.error("alert condition %s failed: %s", name, exc)
        open_rows = db.execute(
            text("SELECT id, open_key, project FROM incidents WHERE state = 'open' FOR UPDATE")
        ).all()
        open_keys = {row.open_key for row in open_rows}
        for key, finding in found.items():
            if key in open_keys:
                continue
            new_id = db.execute(
                _OPEN,
                {
                    "kind": finding.kind, "project": finding.project, "plan": finding.plan,
                    "subject": finding.subject, "key": key, "now": ctx.now,
                    "run_id": finding.run_id, "phase": finding.phase, "error": finding.error,
                    "hint": finding.hint, "details": json.dumps(finding.details, default=str),
                },
            ).scalar()  # fmt: skip
            if new_id is None:
                continue
            result.opened.append(finding)
            queue_messages(db, alerts, new_id, finding.project, "opened", ctx.now)
            log.warning(
                "alert opened: %s %s/%s%s: %s", finding.kind, finding.project, finding.plan,
                f" ({finding.subject})" if finding.subject else "", finding.error,
            )  # fmt: skip
        if result.failed_conditions:
            return result  # what cleared is not known: resolve nothing this time
        for row in open_rows:
            if row.open_key in found:
                continue
            db.execute(
                text(
                    "UPDATE incidents SET state = 'resolved', resolved_at = :now, "
                    "open_key = NULL WHERE id = :i"
                ),
                {"now": ctx.now, "i": row.id},
            )
            result.resolved.append(row.id)
            queue_messages(db, alerts, row.id, row.project, "resolved", ctx.now)
            log.info("alert resolved: incident %d (%s)", row.id, row.open_key.replace("\x1f", " "))
    return result


def incidents_list(
    engine: Engine, *, include_resolved: bool = False, limit: int = 200,
    project: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Open incidents, newest first (with ``include_resolved``, resolved ones too; with
    ``project``, that project's only), each with how its messages went (sent, pending,
    failed)."""
    where = "WHERE (CAST(:project AS text) IS NULL OR i.project = :project)" + (
        "" if include_resolved else " AND i.state = 'open'"
    )
    query = text(
        f"""
        SELECT i.id, i.kind, i.project, i.plan, i.subject, i.state, i.opened_at,
               i.resolved_at, i.run_id, i.phase, i.error, i.hint,
               count(d.id) FILTER (WHERE d.state = 'sent') AS sent,
               count(d.id) FILTER (WHERE d.state = 'pending') AS pending,
               count(d.id) FILTER (WHERE d.state = 'failed') AS failed
        FROM incidents i LEFT JOIN alert_deliveries d ON d.incident_id = i.id
        {where} GROUP BY i.id ORDER BY i.opened_at DESC, i.id DESC LIMIT :limit
        """
    )
    with engine.connect() as db:
        found = db.execute(query, {"limit": limit, "project": project})
        return [dict(row._mapping) for row in found]
