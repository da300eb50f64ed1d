"""Restore drills: a snapshot restored through its source into a sandbox, and checked.

A drill proves that a plan's backups restore into a working service, and how long that
takes (its RTO). The package's modules:

- ``sandbox``: the scratch places restored into (PostgreSQL and MariaDB servers from the
  machine's binaries on a free port, a Redis server loading the RDB, a temporary SQLite
  file or folder), always removed;
- ``checks``: the default check per kind, a query with its expected output, or the
  user's command with the sandbox's connection details in its environment;
- ``choose``: which restore point a drill takes (``latest``, or ``rotating`` back through
  the chains);
- ``drill``: the drill itself, its phases and outcome.

It sits in ``runs`` because a drill is a run of the source's own restore (hooks, lock,
time-out: ``runs.run_source_restore``) followed by a check; like every run it knows no
configuration file (the composition root builds its :class:`DrillCheck`) and no catalog
(the service and the command line record its :class:`DrillOutcome`).
"""

from __future__ import annotations

from safehold.runs.drill.checks import CheckResult, DrillCheck, run_check
from safehold.runs.drill.choose import Point, choose_point
from safehold.runs.drill.drill import DrillOutcome, finish_current_chain, run_drill
from safehold.runs.drill.sandbox import Sandbox, SandboxError, make_sandbox

__all__ = [
    "CheckResult",
    "DrillCheck",
    "DrillOutcome",
    "Point",
    "Sandbox",
    "SandboxError",
    "choose_point",
    "finish_current_chain",
    "make_sandbox",
    "run_check",
    "run_drill",
]
