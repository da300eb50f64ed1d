"""Folders that vanish while a backup runs: one error for the folder, not one per item.

A folder deleted during a backup (a temporary build tree, a rotated log folder) makes every
item the walk listed in it fail with ``ENOENT``: thousands of identical errors, two per file
(its ``stat`` and its read), which buried everything else on standard error. Such an item is
charged to the top-most folder above it that no longer exists, once.
"""

from __future__ import annotations

import errno
import os
import threading

__all__ = ["VANISHED", "Vanished"]

VANISHED = "the folder vanished during the backup; what was not read before is not saved"


class Vanished:
    """Shared by the walk and the readers (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: set[str] = set()

    def folder_of(self, path: str, exc: OSError) -> tuple[str, bool] | None:
        """For an item that failed with ``exc``: ``(folder, first)`` when it failed
        because a folder above it is gone (``first`` for the first item charged to it),
        else None (the item itself is the problem)."""
        if exc.errno != errno.ENOENT:
            return None
        folder = os.path.dirname(path)
        if os.path.lexists(folder):
            return None
        while True:
            up = os.path.dirname(folder)
            if up == folder or os.path.lexists(up):
                break
            folder = up
        with self._lock:
            first = folder not in self._roots
            self._roots.add(folder)
        return folder, first
