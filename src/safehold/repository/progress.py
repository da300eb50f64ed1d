"""Progress events from the repository's long operations (check, prune, repair).

The repository only emits them; the engine's :class:`safehold.engine.progress.Progress`
satisfies this Protocol and passes them on to whoever draws bars or records metrics.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NoProgress", "ProgressSink"]


class ProgressSink(Protocol):
    """The part of the engine's progress events that checking, pruning and repairing need."""

    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None: ...

    def advance(self, items: int = 0, nbytes: int = 0) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """Progress events that go nowhere."""

    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None:
        pass

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass
