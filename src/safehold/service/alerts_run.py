"""The alert engine inside ``safehold serve``: evaluate, deliver, and the runs' pings.

:class:`Alerter` is one background task of a service with a scheduler. Every few seconds
it sends what is due in the outbox (:mod:`.alerts_delivery`), and every
``alerts.evaluate_every`` seconds it evaluates the conditions (:mod:`.alerts`; one
process at a time across services sharing the database). A run's start and end queue
the plan's ``ping:`` URLs through :meth:`Alerter.ping` (called by the workers,
:class:`~safehold.service.jobs.Jobs`) and wake the task, so that a ping goes out at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine

from safehold.clock import SYSTEM_CLOCK, Clock
from safehold.config import Config
from safehold.config.alerts import AlertsConfig, PingConfig
from safehold.service.alerts import EvalResult, evaluate
from safehold.service.alerts_conditions import EvalContext
from safehold.service.alerts_delivery import (
    DeliveryResult,
    deliver_due,
    prune_outbox,
    queue_ping,
)

__all__ = ["DELIVER_EVERY", "AlertSettings", "Alerter", "settings_from_config"]

log = logging.getLogger("safehold.service.alerts")

DELIVER_EVERY = 5.0  # seconds between looks at the outbox (retries, pings of other workers)


@dataclass(frozen=True)
class AlertSettings:
    """What the alerts need of a configuration: the block, RPO targets and pings by plan."""

    alerts: AlertsConfig | None = None
    rpo_targets: Mapping[str, float] = field(default_factory=dict)
    pings: Mapping[str, PingConfig] = field(default_factory=dict)


def settings_from_config(config: Config) -> AlertSettings:
    """The file's alert settings: its ``alerts:`` and each plan's rpo_target and ping."""
    rpo: dict[str, float] = {}
    pings: dict[str, PingConfig] = {}
    for name, source in config.plans.items():
        key = f"{source.common.project}/{name}"
        if source.common.rpo_target is not None:
            rpo[key] = float(source.common.rpo_target)
        if source.common.ping is not None:
            pings[key] = source.common.ping
    return AlertSettings(config.alerts, rpo, pings)


class Alerter:
    """The service's alerting task (see the module)."""

    def __init__(self, engine: Engine, clock: Clock = SYSTEM_CLOCK) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = AlertSettings()
        self._wake: asyncio.Event | None = None

    def configure(self, config: Config) -> None:
        """Take the alert settings of ``config`` (at start and on reload)."""
        self.settings = settings_from_config(config)

    def evaluate_once(self) -> EvalResult:
        """One evaluation now (blocking), and the old sent pings pruned."""
        s = self.settings
        ctx = EvalContext(
            now=self.clock.now(),
            rpo_targets=s.rpo_targets,
            agent_stale_after=s.alerts.agent_stale_after if s.alerts else 300.0,
        )
        result = evaluate(self.engine, s.alerts, ctx)
        if result.evaluated:
            prune_outbox(self.engine, ctx.now)
        return result

    def deliver_once(self) -> DeliveryResult:
        """Send what is due now (blocking)."""
        s = self.settings
        return deliver_due(self.engine, s.alerts, s.pings, self.clock.now())

    async def ping(self, plan_key: str, event: str, run_id: str) -> None:
        """Queue the plan's ``event`` ping (start, success, fail), if it has that URL, and
        wake the task to send it. Never raises: a ping must not fail a run."""
        config = self.settings.pings.get(plan_key)
        if config is None or config.url(event) is None:
            return
        try:
            await asyncio.to_thread(
                queue_ping, self.engine, plan_key, event, run_id, self.clock.now()
            )
        except Exception as exc:
            log.warning("could not queue the %s ping of %s: %s", event, plan_key, exc)
            return
        if self._wake is not None:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver and evaluate until ``stop``."""
        self._wake = asyncio.Event()
        last_eval: float | None = None
        while not stop.is_set():
            every = self.settings.alerts.evaluate_every if self.settings.alerts else 60.0
            try:
                if last_eval is None or self.clock.monotonic() - last_eval >= every:
                    last_eval = self.clock.monotonic()
                    await asyncio.to_thread(self.evaluate_once)
                await asyncio.to_thread(self.deliver_once)
            except Exception as exc:  # the database went away: the next pass tries again
                log.warning("alerts: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                waits = [asyncio.ensure_future(stop.wait()),
                         asyncio.ensure_future(self._wake.wait())]  # fmt: skip
                try:
                    await asyncio.wait(waits, timeout=DELIVER_EVERY,
                                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                finally:
                    for w in waits:
                        w.cancel()
