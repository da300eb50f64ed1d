"""The standalone agent's alerts and pings, Cloud Foundry service-backup's way: told on
every failure, with no database.

When a source's run has failed or timed out for good (after its retries), the agent
opens the source's incident in its state file and queues one message (the service's
own, :func:`safehold.notify.messages.incident_message`: project, plan, run id, phase,
error, next step) for every channel of every receiver of ``alerts:`` whose projects
include the source's; later failures of the open incident send nothing more. The next
success clears it and queues the "resolved" message. The incident lives in the state
file, so a restart neither repeats the alert nor forgets to resolve it.

A source's ``ping: {start, success, fail}`` URLs are queued at each run's start and end.

Nothing is sent from a run: everything goes into the source's ``outbox`` in the state
file, and :meth:`AgentAlerts.deliver_due`, called by a background task of the agent,
sends what is due in a thread. A delivery that fails is logged (``alert.delivery_failed``,
secrets masked), counted and tried again after ``alerts.retry_delay``, doubled each time
(at most an hour), until ``alerts.max_attempts``; then it stays in the state file as
``failed`` (``alert.gave_up``, shown by ``safehold agent status``): never dropped
silently, and never in a run's way.

The agent and its manual trigger (``safehold agent run``, :mod:`.manual`) both queue
into the outbox and both send from it, each from its own process. A delivery is claimed
before it is sent (``sending``: the process, in the same locked write of the state file
that checks nobody else holds it), so two processes never send it twice; a claim whose
process is gone (killed while sending) no longer holds, and the delivery is due again.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from safehold.agent.state import AgentState, RunResult, SourceState, is_live, this_process
from safehold.config import Config
from safehold.config.alerts import (
    AlertsConfig,
    ChannelConfig,
    PingConfig,
    alerts_secrets,
)
from safehold.notify import (
    Channel,
    DeliveryError,
    make_channel,
    mask,
    ping,
)
from safehold.notify.messages import incident_message

__all__ = ["FAILED_KEPT", "MAX_BACKOFF", "AgentAlerts", "build_channel"]

MAX_BACKOFF = 3600.0  # seconds at most between two tries of one delivery
FAILED_KEPT = 50  # deliveries failed for good kept per source (the newest)
_TITLE = "backup failed"  # the service's title for a run_failed incident
_FAILED = ("failed", "timeout")  # outcomes that open an incident
_RESOLVING = ("success", "partial")  # outcomes that saved a snapshot: the incident clears

Log = Callable[..., None]  # (level, event, **fields)


def build_channel(config: ChannelConfig) -> Channel:
    """The transport for a configured channel, as the service makes it, but for the
    webhook's own tries: two, as the agent's outbox retries later."""
    options = config.transport()
    if config.type == "webhook":
        options["tries"] = 2
    return make_channel(config.type, options)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _what(item: dict[str, Any]) -> str:
    """``ping start``, ``message opened``...: what a delivery is, for the log."""
    return f"{item.get('what')} {item.get('event')}"


def _is_due(item: dict[str, Any], now: datetime) -> bool:
    if item.get("state") != "pending" or _held_by_another(item):
        return False
    try:
        return datetime.fromisoformat(str(item.get("next_at"))) <= now
    except ValueError:  # a hand-edited entry: tried now rather than never
        return True


def _held_by_another(item: dict[str, Any]) -> bool:
    """Whether another live process is sending ``item`` now (this process's own claim,
    left by a trouble between sending and recording, does not hold it back)."""
    holder = item.get("sending")
    return isinstance(holder, dict) and holder.get("pid") != os.getpid() and is_live(holder)


@dataclass
class AgentAlerts:
    """The agent's alert settings (from its file) and outbox (in its state file)."""

    state: AgentState
    log: Log
    alerts: AlertsConfig | None = None
    pings: dict[str, PingConfig] = field(default_factory=dict)  # by source name
    secrets: list[str] = field(default_factory=list)

    def configure(self, config: Config) -> None:
        """Take the file's ``alerts:`` and its sources' ``ping:`` (at start, on reload)."""
        self.alerts = config.alerts
        self.pings = {
            name: source.common.ping
            for name, source in config.sources.items()
            if source.common.ping is not None
        }
        self.secrets = alerts_secrets(config.alerts, list(self.pings.values()))

    # --- queueing (from the runs) -----------------------------------------------------

    def _entry(self, now: datetime, **what: Any) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "queued_at": _iso(now), "next_at": _iso(now),
                "attempts": 0, "state": "pending", "last_error": None, **what}  # fmt: skip

    def ping(self, source: str, event: str, run_id: str, now: datetime) -> bool:
        """Queue ``source``'s ``event`` ping (start, success, fail) if it has that URL;
        whether one was queued. The URL is read again when it is sent (never stored)."""
        config = self.pings.get(source)
        if config is None or config.url(event) is None:
            return False

        def queue(entry: SourceState) -> None:
            entry.outbox.append(self._entry(now, what="ping", event=event, run_id=run_id))

        self.state.update(source, queue)
        return True

    def run_ended(self, source: str, plan_key: str, result: RunResult, now: datetime) -> str:
        """After a run's last attempt: open the source's incident on a failure (unless it
        is open), resolve it on a success. ``opened``, ``resolved`` or ``""`` (nothing
        changed). The messages are queued in the same write as the incident's change."""
        if result.outcome not in _FAILED + _RESOLVING:
            return ""  # interrupted, skipped, refused: no news of the source's health
        project, _, plan = plan_key.partition("/")
        receivers = [
            (name, receiver)
            for name, receiver in (self.alerts.receivers.items() if self.alerts else [])
            if receiver.covers(project)
        ]
        changed = ""

        def change(entry: SourceState) -> None:
            nonlocal changed
            if result.outcome in _FAILED:
                if entry.incident is not None:
                    return  # told already: once per incident
                timed_out = result.outcome == "timeout"
                entry.incident = {
                    "kind": "run_failed",
                    "project": project,
                    "plan": plan,
                    "subject": "",
                    "run_id": result.run_id,
                    "phase": result.phase or "backup",
                    "error": result.error
                    or ("the run timed out" if timed_out else "the run failed"),
                    "hint": f"see the agent's log lines with backup_guid {result.run_id}; "
                    f"try it by hand: safehold agent run {source} --config FILE"
                    + ("; raise the source's timeout: if it needs longer" if timed_out else ""),
                    "opened_at": _iso(now),
                    "resolved_at": None,
                }
                event = changed = "opened"
                incident = entry.incident
            else:
                if entry.incident is None:
                    return
                incident = {**entry.incident, "resolved_at": _iso(now),
                            "resolved_by": result.run_id}  # fmt: skip
                entry.incident = None
                event = changed = "resolved"
            for name, receiver in receivers:
                for channel, _ in receiver.named_channels():
                    entry.outbox.append(
                        self._entry(
                            now,
                            what="message",
                            event=event,
                            receiver=name,
                            channel=channel,
                            incident=incident,
                        )
                    )

        self.state.update(source, change)
        if changed:
            self.log(
                "error" if changed == "opened" else "info",
                f"alert.{changed}",
                source=source,
                plan=plan_key,
                run_id=result.run_id,
                backup_guid=result.run_id,
                receivers=[name for name, _ in receivers],
            )
        return changed

    # --- delivering (the background task) ----------------------------------------------

    def due(self, now: datetime, source: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The pending deliveries whose time has come (of ``source`` alone if given),
        oldest first, with their source."""
        found = [
            (name, item)
            for name, entry in self.state.load().items()
            if source is None or name == source
            for item in entry.outbox
            if _is_due(item, now)
        ]
        return sorted(found, key=lambda pair: str(pair[1].get("queued_at")))

    def _claim(self, source: str, item_id: str, now: datetime) -> dict[str, Any] | None:
        """Mark a delivery as being sent by this process; the delivery as the file has it
        now, or None when it went meanwhile or another process is sending it."""
        claimed: dict[str, Any] | None = None

        def claim(entry: SourceState) -> None:
            nonlocal claimed
            for found in entry.outbox:
                if found.get("id") == item_id and _is_due(found, now):
                    found["sending"] = this_process()
                    claimed = dict(found)

        self.state.update(source, claim)
        return claimed

    def _send(self, source: str, item: dict[str, Any]) -> str:
        """Send one delivery; what it went through (a label with no secret). Raises
        :class:`DeliveryError` when it did not go."""
        if item.get("what") == "ping":
            config = self.pings.get(source)
            url = config.url(str(item.get("event"))) if config else None
            if url is None:
                return ""  # the URL was removed from the file since: nothing to send
            ping(url)
            return f"ping {item.get('event')}"
        receiver = self.alerts.receivers.get(str(item.get("receiver"))) if self.alerts else None
        channels = dict(receiver.named_channels()) if receiver else {}
        configured = channels.get(str(item.get("channel")))
        if configured is None:
            return ""  # the receiver or channel was removed from the file since
        channel = build_channel(configured)
        incident = item.get("incident") or {}
        channel.send(incident_message(incident, str(item.get("event")), title=_TITLE))
        return channel.label

    def deliver_due(
        self,
        now: datetime,
        stopping: Callable[[], bool] = lambda: False,
        *,
        source: str | None = None,
    ) -> int:
        """Send every delivery due at ``now`` (of ``source`` alone if given; blocking: the
        agent calls it in a thread), until ``stopping()`` says to leave the rest for
        later; how many went."""
        sent = 0
        for name, listed in self.due(now, source):
            if stopping():
                break
            item = self._claim(name, str(listed["id"]), now)
            if item is None:
                continue  # another process (the agent, a manual run) is sending it
            try:
                label = self._send(name, item)
            except Exception as exc:  # any channel's trouble is recorded, never raised
                self._failed(name, item, exc, now)
                continue
            self._remove(name, str(item["id"]))
            if label:
                sent += 1
                self.log("info", "alert.sent", source=name, what=_what(item),
                         receiver=item.get("receiver"),
                         channel=mask(label, self.secrets), run_id=item.get("run_id"),
                         attempts=int(item.get("attempts") or 0) + 1)  # fmt: skip
        return sent

    def _remove(self, source: str, item_id: str) -> None:
        def remove(entry: SourceState) -> None:
            entry.outbox = [o for o in entry.outbox if o.get("id") != item_id]

        self.state.update(source, remove)

    def _failed(self, source: str, item: dict[str, Any], exc: Exception, now: datetime) -> None:
        detail = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
        detail = mask(detail, self.secrets)
        max_attempts = self.alerts.max_attempts if self.alerts else 10
        delay = self.alerts.retry_delay if self.alerts else 30.0
        attempts = int(item.get("attempts") or 0) + 1
        gave_up = attempts >= max_attempts
        wait = min(delay * 2 ** (attempts - 1), MAX_BACKOFF)
        item_id = str(item["id"])

        def record(entry: SourceState) -> None:
            for found in entry.outbox:
                if found.get("id") == item_id:
                    found.pop("sending", None)
                    found.update(attempts=attempts, last_error=detail,
                                 last_attempt_at=_iso(now),
                                 next_at=_iso(now + timedelta(seconds=wait)))  # fmt: skip
                    if gave_up:
                        found.update(state="failed", next_at=None)
            failed = [o for o in entry.outbox if o.get("state") == "failed"]
            if len(failed) > FAILED_KEPT:  # the oldest failures go; the newest stay seen
                dropped = {id(o) for o in failed[: len(failed) - FAILED_KEPT]}
                entry.outbox = [o for o in entry.outbox if id(o) not in dropped]

        self.state.update(source, record)
        fields = {"source": source, "what": _what(item), "receiver": item.get("receiver"),
                  "channel": item.get("channel"), "run_id": item.get("run_id"),
                  "attempts": attempts, "error": detail}  # fmt: skip
        if gave_up:
            self.log("error", "alert.gave_up", **fields, max_attempts=max_attempts,
                     message="this message is not tried again; it stays in the state file "
                     "(safehold agent status)")  # fmt: skip
        else:
            self.log("warning", "alert.delivery_failed", **fields, retry_in_s=wait)
