"""What an alert says: the service's incidents through the shared, pure message builder
(:mod:`safehold.notify.messages`, which the standalone agent uses too), titled by
:data:`~safehold.service.alerts_conditions.KIND_TITLES`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safehold.notify import Message
from safehold.notify.messages import incident_message as _incident_message
from safehold.notify.messages import trial_message
from safehold.service.alerts_conditions import KIND_TITLES

__all__ = ["incident_message", "trial_message"]


def incident_message(incident: Mapping[str, Any], event: str) -> Message:
    """The message for ``event`` (``opened`` or ``resolved``) of an incident row."""
    kind = str(incident["kind"])
    return _incident_message(incident, event, title=KIND_TITLES.get(kind))
