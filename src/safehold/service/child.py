"""The service's name for :mod:`safehold.runs.child`, where running one job in a child
process now lives: the standalone agent (:mod:`safehold.agent`), beside the service in
the layers, runs its jobs the same way and may not import the service."""

from __future__ import annotations

from safehold.runs.child import (
    KILL_GRACE,
    TERM_WAIT,
    ChildResult,
    LogLine,
    backup_argv,
    parse_line,
    prune_argv,
    restore_argv,
    retention_argv,
    run_child,
    stop_child,
)

__all__ = [
    "KILL_GRACE",
    "TERM_WAIT",
    "ChildResult",
    "LogLine",
    "backup_argv",
    "parse_line",
    "prune_argv",
    "restore_argv",
    "retention_argv",
    "run_child",
    "stop_child",
]
