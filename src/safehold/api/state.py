"""What the routes share: the catalog, the service's plans and queue, the token limiter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from sqlalchemy import Engine

from safehold.service.plans import PlanSpec

if TYPE_CHECKING:
    from safehold.api.auth import FailureLimiter
    from safehold.service.agents import Agents
    from safehold.service.jobs import Queue
    from safehold.service.vault import Vault

__all__ = ["ApiState", "api_state"]


@dataclass
class ApiState:
    """The service's parts an API call uses. ``plans`` is read at each call (a reload
    replaces the plans); ``jobs`` queues runs: the service's own queue, on its event loop
    (the API needs a queue, not a worker)."""

    engine: Engine
    plans: Callable[[], Mapping[str, PlanSpec]]
    jobs: Queue | None
    limiter: FailureLimiter
    agents: Agents | None = None  # the agents' side of the queue (with jobs)
    vault: Vault | None = None  # the service's key: destinations and plans made here


def api_state(request: Request) -> ApiState:
    """The :class:`ApiState` of the app serving ``request``."""
    state: ApiState = request.app.state.safehold
    return state
