"""Progress events from the repository's long operations (check, prune, repair).

The repository only emits them; the engine's :class:`safehold.engine.progress.Progress`
satisfies this Protocol and passes them on to whoever draws bars or records metrics.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NoProgress", "ProgressSink"]


class ProgressSink(Protocol):
    """The part of the engine's progress events that checking, pruning and repairing need."""

    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None:
        """A phase begins, with its totals when known (0: unknown)."""

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        """Items and bytes done since the last call."""

    def finish(self) -> None:
        """The phase is over."""


class NoProgress:
    """Progress events that go nowhere."""

    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None:
        """Nothing: no one is watching."""

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        """Nothing: no one is watching."""

    def finish(self) -> None:
        """Nothing: no one is watching."""
