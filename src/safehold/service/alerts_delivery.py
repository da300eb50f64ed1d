"""Sending the outbox: each (incident event, channel) and each ping, with retries.

:func:`deliver_due` takes the due rows of ``alert_deliveries`` one at a time
(``FOR UPDATE SKIP LOCKED``: several services may send side by side, never the same row
twice at once), builds the channel from the configuration *now* (the row names a
receiver and a channel, no secret is stored) and sends. A failure is recorded on the row
(``attempts``, ``last_error`` with secrets masked) and tried again after a back-off that
doubles, up to ``alerts.max_attempts``; then the row is ``failed``, which is logged as an
error and shown by ``safehold alerts``: never silently dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from safehold.config.alerts import (
    AlertsConfig,
    ChannelConfig,
    PingConfig,
    alerts_secrets,
)
from safehold.notify import (
    Channel,
    DeliveryError,
    Message,
    make_channel,
    mask,
    ping,
)
from safehold.service.alerts_messages import incident_message

__all__ = [
    "KEEP_PINGS",
    "MAX_BACKOFF",
    "DeliveryResult",
    "build_channel",
    "deliver_due",
    "prune_outbox",
    "queue_ping",
]

log = logging.getLogger("safehold.service.alerts")

MAX_BACKOFF = 3600.0  # seconds at most between two tries of one message
# Sent pings are kept this long (two a run: 10,000 hourly plans make 480,000 a day); an
# incident's messages stay with it, and failed pings stay until looked at.
KEEP_PINGS = timedelta(days=2)


def build_channel(config: ChannelConfig) -> Channel:
    """The transport for a configured channel."""
    return make_channel(config.type, config.transport())


@dataclass
class DeliveryResult:
    """What one pass sent: row ids sent, to be retried, and failed for good."""

    sent: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def queue_ping(engine: Engine, plan_key: str, event: str, run_id: str, now: datetime) -> None:
    """Queue ``event`` (start, success, fail) of run ``run_id`` for the plan's ping URL."""
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO alert_deliveries (event, receiver, channel, next_at, payload) "
                "VALUES ('ping', :plan, :event, :now, CAST(:payload AS jsonb))"
            ),
            {
                "plan": plan_key,
                "event": event,
                "now": now,
                "payload": json.dumps({"run_id": run_id}),
            },
        )


_NEXT = text(
    """
    SELECT d.id, d.incident_id, d.event, d.receiver, d.channel, d.attempts, d.payload,
           i.kind, i.project, i.plan, i.subject, i.state AS incident_state, i.opened_at,
           i.resolved_at, i.run_id, i.phase, i.error, i.hint
    FROM alert_deliveries d LEFT JOIN incidents i ON i.id = d.incident_id
    WHERE d.state = 'pending' AND d.next_at <= :now AND NOT (d.id = ANY(:seen))
    ORDER BY d.next_at, d.id LIMIT 1 FOR UPDATE OF d SKIP LOCKED
    """
)


def _find_channel(alerts: AlertsConfig | None, receiver: str, channel: str) -> ChannelConfig:
    found = alerts.receivers.get(receiver) if alerts else None
    if found is None:
        raise DeliveryError(
            f"receiver {receiver} is not in the configuration any more",
            hint="the message cannot be sent; add the receiver back to alerts.receivers",
        )
    for name, config in found.named_channels():
        if name == channel:
            return config
    raise DeliveryError(
        f"receiver {receiver} has no channel {channel} any more",
        hint="the message cannot be sent; channels are named by name: or TYPE-N",
    )


def deliver_due(
    engine: Engine,
    alerts: AlertsConfig | None,
    pings: Mapping[str, PingConfig],
    now: datetime,
    *,
    limit: int = 100,
    make_channel: Callable[[ChannelConfig], Channel] = build_channel,
) -> DeliveryResult:
    """Send up to ``limit`` due rows (see the module)."""
    result = DeliveryResult()
    secrets = alerts_secrets(alerts, list(pings.values()))
    max_attempts = alerts.max_attempts if alerts else 10
    base = alerts.retry_delay if alerts else 30.0
    seen: list[int] = []
    for _ in range(limit):
        with engine.begin() as db:
            row = db.execute(_NEXT, {"now": now, "seen": seen}).one_or_none()
            if row is None:
                break
            seen.append(row.id)
            error: str | None = None
            try:
                if row.event == "ping":
                    _send_ping(pings, row.receiver, row.channel, row.payload or {})
                else:
                    channel = make_channel(_find_channel(alerts, row.receiver, row.channel))
                    channel.send(incident_message(dict(row._mapping, id=row.incident_id),
                                                  row.event))  # fmt: skip
            except DeliveryError as exc:
                error = str(exc)
            except Exception as exc:  # a channel's bug must not stop the others
                error = f"{type(exc).__name__}: {exc}"
            attempts = row.attempts + 1
            if error is None:
                db.execute(
                    text(
                        "UPDATE alert_deliveries SET state = 'sent', attempts = :a, "
                        "sent_at = :now, last_error = NULL WHERE id = :i"
                    ),
                    {"a": attempts, "now": now, "i": row.id},
                )
                result.sent.append(row.id)
                continue
            error = mask(error, secrets)
            final = attempts >= max_attempts
            wait = min(base * 2 ** (attempts - 1), MAX_BACKOFF)
            db.execute(
                text(
                    "UPDATE alert_deliveries SET state = :state, attempts = :a, "
                    "last_error = :e, next_at = :next WHERE id = :i"
                ),
                {
                    "state": "failed" if final else "pending",
                    "a": attempts,
                    "e": error,
                    "next": now + timedelta(seconds=0 if final else wait),
                    "i": row.id,
                },
            )
            what = _describe(row)
            if final:
                result.failed.append(row.id)
                log.error("alert delivery failed for good after %d attempts: %s: %s",
                          attempts, what, error)  # fmt: skip
            else:
                result.retrying.append(row.id)
                log.warning("alert delivery failed (attempt %d of %d, again in %.0f s): %s: %s",
                            attempts, max_attempts, wait, what, error)  # fmt: skip
    return result


def prune_outbox(engine: Engine, now: datetime) -> int:
    """Delete the pings sent before ``now - KEEP_PINGS``; how many."""
    with engine.begin() as db:
        done = db.execute(
            text(
                "DELETE FROM alert_deliveries WHERE event = 'ping' AND state = 'sent' "
                "AND sent_at < :before"
            ),
            {"before": now - KEEP_PINGS},
        )
    return int(done.rowcount or 0)


def _describe(row: Any) -> str:
    if row.event == "ping":
        return f"ping {row.channel} of plan {row.receiver}"
    return f"{row.event} of incident {row.incident_id} to {row.receiver}/{row.channel}"


def _send_ping(pings: Mapping[str, PingConfig], plan: str, event: str,
               payload: Mapping[str, Any]) -> None:  # fmt: skip
    config = pings.get(plan)
    url = config.url(event) if config is not None else None
    if url is None:
        raise DeliveryError(
            f"plan {plan} has no ping {event} URL any more",
            hint=f"add sources.<name>.ping.{event} back to the configuration",
        )
    ping(url)


def send_now(channel: Channel, message: Message, secrets: list[str]) -> str | None:
    """Send one message at once (``alerts test``); the masked error, or None if it went."""
    try:
        channel.send(message)
    except DeliveryError as exc:
        return mask(str(exc), secrets)
    except Exception as exc:
        return mask(f"{type(exc).__name__}: {exc}", secrets)
    return None
