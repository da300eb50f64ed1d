"""What an alert says: one :class:`~safehold.notify.Message` per incident event.

Pure (no catalog): the standalone agent builds its messages here too
(:mod:`safehold.agent.alerts`), through :mod:`safehold.notify` which re-exports this
module's functions; the service passes its incidents' titles (:data:`KIND_TITLES`).

Every message names the project, plan, run id, phase, error and the next step (hint), in
the subject's few words, a text body, an HTML body (escaped: errors quote tool output) and
the JSON fields a webhook receives.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from safehold.notify.base import Message

__all__ = ["incident_message", "trial_message"]

_COLOURS = {"opened": "#b00020", "resolved": "#1b7f3b", "test": "#1f5fa8"}


def _when(value: Any) -> str:
    if isinstance(value, datetime):  # in UTC whatever the database session's time zone
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    return str(value or "")


def incident_message(
    incident: Mapping[str, Any], event: str, *, title: str | None = None
) -> Message:
    """The message for ``event`` (``opened`` or ``resolved``) of an incident row (or of
    a mapping with the same keys); ``title`` names its kind (default: the kind's words)."""
    kind = str(incident["kind"])
    title = title or kind.replace("_", " ")
    project, plan, subject = incident["project"], incident["plan"] or "", incident["subject"] or ""
    where = f"{project}/{plan}" if plan else project
    if subject:
        where += f" ({subject})"
    state = "RESOLVED" if event == "resolved" else "ALERT"
    subject_line = f"[safehold] {state}: {title}: {where}"
    rows: list[tuple[str, str]] = [
        ("project", project),
        ("plan", plan or "-"),
        ("run id", incident.get("run_id") or "-"),
        ("phase", incident.get("phase") or "-"),
        ("error", incident.get("error") or "-"),
        ("next step", incident.get("hint") or "-"),
        ("opened", _when(incident.get("opened_at"))),
    ]
    if subject:
        rows.insert(2, ("subject", subject))
    if event == "resolved":
        rows.append(("resolved", _when(incident.get("resolved_at"))))
        lead = f"Resolved: {title} for {where}. The condition has cleared."
    else:
        lead = f"{title.capitalize()} for {where}."
    # A multi-line value (an error quoting a tool's output) stays under its column.
    lines = [f"{k + ':':<11} " + str(v).replace("\n", "\n" + " " * 12) for k, v in rows]
    text_body = lead + "\n\n" + "\n".join(lines) + "\n"
    colour = _COLOURS.get(event, "#444")
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td class='{html.escape(k.replace(' ', '-'))}' style='white-space:pre-wrap'>"
        f"{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    html_body = (
        f"<html><body><h2 style='color:{colour}'>{html.escape(subject_line)}</h2>"
        f"<p>{html.escape(lead)}</p><table>{cells}</table></body></html>"
    )
    fields = {
        "event": event,
        "incident": incident.get("id"),
        "kind": kind,
        "title": title,
        "project": project,
        "plan": plan,
        "subject": subject,
        "run_id": incident.get("run_id"),
        "phase": incident.get("phase"),
        "error": incident.get("error"),
        "hint": incident.get("hint"),
        "opened_at": incident.get("opened_at"),
        "resolved_at": incident.get("resolved_at"),
    }
    return Message(subject_line, text_body, html_body, fields)


def trial_message(receiver: str, channel: str) -> Message:
    """A message that says it is a test, through ``receiver``'s ``channel``."""
    lead = f"A test message from safehold for receiver {receiver}, channel {channel}."
    return Message(
        f"[safehold] test message ({receiver}/{channel})",
        lead + "\nIf you read this, alerts reach you through this channel.\n",
        f"<html><body><h2 style='color:{_COLOURS['test']}'>safehold test message</h2>"
        f"<p>{html.escape(lead)}</p></body></html>",
        {"event": "test", "receiver": receiver, "channel": channel},
    )
