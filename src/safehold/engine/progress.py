"""Progress events: the engine calls these; front ends decide how to show them."""

from __future__ import annotations


class Progress:
    """A no-op progress sink. Subclasses override what they want to show.

    Methods may be called from worker threads; implementations must be thread-safe.
    """

    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None:
        """A phase (scan, backup, restore, check...) begins; totals may be 0 if unknown."""

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        """Work was done in the current phase."""

    def warn(self, path: str, message: str) -> None:
        """A non-fatal problem with one item (an unreadable file)."""

    def finish(self) -> None:
        """The current phase ended."""


NO_PROGRESS = Progress()
