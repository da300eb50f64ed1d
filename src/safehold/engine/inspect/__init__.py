"""Inspect: reading snapshots without restoring them.

``diff`` compares two snapshots' trees, ``stats`` counts what snapshots hold and store,
``find`` searches snapshots with the backup's patterns, ``mount`` serves them as a
read-only file system (``mount_view`` is the part that knows nothing of FUSE). All of them
walk snapshot trees through ``engine/tree_walk.py`` or load trees directly.
"""

from __future__ import annotations

from safehold.engine.inspect.diff import DiffResult, diff_trees
from safehold.engine.inspect.find import compile_patterns, find_in_snapshot
from safehold.engine.inspect.mount import MountOptions, check_fuse, serve
from safehold.engine.inspect.mount_view import MountView
from safehold.engine.inspect.stats import compute_stats, list_chains

__all__ = [
    "DiffResult",
    "MountOptions",
    "MountView",
    "check_fuse",
    "compile_patterns",
    "compute_stats",
    "diff_trees",
    "find_in_snapshot",
    "list_chains",
    "serve",
]
