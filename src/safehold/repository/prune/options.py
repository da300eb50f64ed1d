"""What a prune may do: how much unused space a pack may keep before it is repacked, and
the margin for clocks that disagree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from safehold.errors import UsageError

__all__ = ["DEFAULT_LOCK_SKEW", "DEFAULT_MAX_UNUSED", "PruneOptions"]

DEFAULT_MAX_UNUSED = 10.0
DEFAULT_LOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, kw_only=True)
class PruneOptions:
    """How prune decides what to repack and how long trashed packs wait; validated on creation."""

    max_unused: float = DEFAULT_MAX_UNUSED
    """Percent of a pack's blob bytes that may be unused before the pack is repacked;
    100 never repacks (only wholly unused packs are removed)."""
    lock_skew: timedelta = DEFAULT_LOCK_SKEW
    """Margin added to a trash record's time before locks are compared with it."""
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.max_unused <= 100:
            raise UsageError(f"max unused must be between 0 and 100 %, not {self.max_unused}")
        if self.lock_skew < timedelta(0):
            raise UsageError("the lock skew margin must not be negative")
