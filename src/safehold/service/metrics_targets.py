"""Each plan's ``rpo_target`` for the metrics and the reports, read defensively.

The setting belongs to the alerts (a source block's ``rpo_target:``). It is taken from the
running service's plans when a plan has it as an attribute, else from the plan's catalog
row (``settings->>'rpo_target'``, for a process that does not have the plan loaded); a
value that is absent or not a number is no target.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["Targets", "rpo_targets", "seconds"]

Targets = Mapping[str, float]  # plan key (project/name) -> seconds


def seconds(value: object) -> float | None:
    """``value`` as seconds, or None (absent, null or not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(str(value))
    except ValueError:
        return None


def rpo_targets(specs: Iterable[object]) -> dict[str, float]:
    """The targets of the plans ``specs`` (PlanSpecs) that have one, by plan key."""
    found = {}
    for spec in specs:
        target = seconds(getattr(spec, "rpo_target", None))
        if target is not None:
            found[f"{getattr(spec, 'project', '')}/{getattr(spec, 'name', '')}"] = target
    return found
