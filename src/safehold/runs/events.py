"""Structured log events of a source run, with every known secret masked.

The engine never prints: a run hands :class:`LogEvent` objects to a sink the front end
chooses (the CLI writes text or one JSON object per line; the service will keep them).
Every event of a run carries its run id, source and identifier, so the lines of one run
can be picked out of a shared log (service-backup's ``backup_guid``).

A :class:`Redactor` knows the secrets of a run (the repository password, a source's
passwords, backend credentials) and masks them in every string that leaves a run: log
fields, hook output, error messages, the run record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from safehold.clock import utcnow

__all__ = ["LogEvent", "LogSink", "Redactor", "RunLogger", "discard"]

MASK = "***"
_MIN_SECRET = 4  # shorter "secrets" would mask ordinary words and digits everywhere


@dataclass(frozen=True)
class LogEvent:
    """One structured log event of a run, with its fields (secrets masked before it is made)."""

    ts: datetime
    level: str  # "debug", "info", "warning", "error"
    event: str  # dotted name: "hook.finished", "backup.saved", "run.finished"
    fields: dict[str, Any] = field(default_factory=dict)


LogSink = Callable[[LogEvent], None]


def discard(event: LogEvent) -> None:
    """A sink that drops every event."""


class Redactor:
    """Replaces each known secret with ``***`` in strings (and inside dicts and lists)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found = {s for s in secrets if s and len(s) >= _MIN_SECRET}
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted(found, key=len, reverse=True)

    def add(self, secret: str) -> None:
        """Mask ``secret`` from now on (ignored when shorter than ``_MIN_SECRET`` characters)."""
        if secret and len(secret) >= _MIN_SECRET and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)

    def text(self, value: str) -> str:
        """``value`` with every known secret in it masked."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def value(self, value: Any) -> Any:
        """``value`` with secrets masked in its strings, inside dicts and lists too."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


class RunLogger:
    """Sends events to ``sink`` with the run's own fields added and secrets masked."""

    def __init__(self, sink: LogSink, redactor: Redactor, **bound: Any) -> None:
        self._sink = sink
        self._redactor = redactor
        self.bound: dict[str, Any] = dict(bound)

    def bind(self, **more: Any) -> None:
        """Add fields to every later event of this run."""
        self.bound.update(more)

    def log(self, level: str, event: str, **fields: Any) -> None:
        """Send one event of ``level`` with the bound fields, secrets masked."""
        merged = {**self.bound, **fields}
        self._sink(LogEvent(utcnow(), level, event, self._redactor.value(merged)))

    def info(self, event: str, **fields: Any) -> None:
        """:meth:`log` at level info."""
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        """:meth:`log` at level warning."""
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        """:meth:`log` at level error."""
        self.log("error", event, **fields)
