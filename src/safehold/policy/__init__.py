"""Policy: the decisions safehold makes, as pure functions of data and ``now``.

A policy answers questions such as "which snapshots does ``forget`` keep?" from plain
values alone. Nothing in this package reads the clock, the storage, the repository or the
catalog: callers pass the snapshots (anything with an ``id``, a ``time`` and ``tags``) and
the current time in, and get a decision back. That keeps every rule testable without
sleeping or mocking, and lets the CLI, the service and a dry run share one implementation.

Concepts:

- **Duration** (:mod:`safehold.policy.duration`): a restic-style calendar span such as
  ``30d`` or ``1y6m``. Years, months and days are calendar steps on the wall clock (a month
  back from 31 March is the last day of February); hours are elapsed time.
- **Retention policy** (:mod:`safehold.policy.retention`): keep rules in the manner of
  ``restic forget`` -- the last N, the newest per hour/day/ISO week/month/year, everything
  within a duration of ``now``, the newest per bucket within a duration, and snapshots
  carrying a set of tags. A snapshot is kept when at least one rule keeps it; the result
  records every rule that did, so ``forget`` can explain itself.
- **Schedule** (:mod:`safehold.policy.schedule`): when a plan wants to run -- cron fields
  (five, or six with seconds first as service-backup writes them), names, a stable
  per-plan spread (``H``, ``@daily-random``) and ``@every``, in a time zone -- as slot times.
- **Slots** (:mod:`safehold.policy.slots`): the scheduler's rule for the ledger: which due
  slots run, which are skipped (paused, overlap, minimum interval) and which were missed,
  with one catch-up run after a downtime.
- **Groups**: retention applies to one series at a time (one host and set of paths, one
  plan and destination); :func:`group_items` splits a list of snapshots into such series.
"""

from __future__ import annotations

from safehold.policy.duration import Duration, parse_duration
from safehold.policy.retention import (
    RetentionItem,
    RetentionPolicy,
    RetentionResult,
    apply_retention,
    from_osb,
    group_items,
)

__all__ = [
    "Duration",
    "RetentionItem",
    "RetentionPolicy",
    "RetentionResult",
    "apply_retention",
    "from_osb",
    "group_items",
    "parse_duration",
]
