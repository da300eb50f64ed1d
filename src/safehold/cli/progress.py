"""A terminal progress bar for engine events (rich is imported only when one is drawn)."""

from __future__ import annotations

import sys
import threading
from typing import Any

from safehold.engine.progress import Progress


class BarProgress(Progress):
    """Progress bars on standard error, drawn with rich."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._console = Console(file=sys.stderr)
        self._bar = RichProgress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,
        )
        self._task: Any = None
        self._lock = threading.Lock()
        self._items = 0

    def start(self, phase: str, total_items: int = 0, total_bytes: int = 0) -> None:
        """A bar for ``phase`` (sized in bytes when ``total_bytes`` is known)."""
        with self._lock:
            self._bar.start()
            self._items = 0
            self._task = self._bar.add_task(phase, total=total_bytes or None)

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        """Move the bar by ``nbytes`` (items are not drawn)."""
        with self._lock:
            if self._task is not None:
                self._bar.advance(self._task, nbytes)

    def warn(self, path: str, message: str) -> None:
        """A warning line above the bar."""
        with self._lock:
            self._console.print(f"[yellow]warning[/]: {path}: {message}")

    def finish(self) -> None:
        """Remove the bar."""
        with self._lock:
            if self._task is not None:
                self._bar.remove_task(self._task)
                self._task = None
            self._bar.stop()


class WarningsOnly(Progress):
    """In a pipe: no bar, but problems with single files still go to standard error."""

    def warn(self, path: str, message: str) -> None:
        """A warning line on standard error."""
        print(f"warning: {path}: {message}", file=sys.stderr)


def make_progress(enabled: bool) -> Progress:
    """Bars when ``enabled`` (a terminal, not ``--quiet``), else warnings only."""
    return BarProgress() if enabled else WarningsOnly()
