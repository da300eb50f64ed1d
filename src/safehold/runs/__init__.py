"""Runs: one configured source backed up or restored once, with its hooks and time-out.

A run sits between the composition root (the command line; later the service), which
builds a :class:`SourceJob` and opens the repository, and the engine, whose backup and
restore it calls. The package's modules:

- ``job``: :class:`SourceJob`, everything a run needs to know about one source;
- ``source_run``: the run itself (identifier, run lock, hooks in their order, the
  overall time-out, the data, cleanup and unlock whatever happened) and its outcome;
- ``deadline``: the run's overall time-out, by SIGALRM where the runtime allows one,
  else checked between reads;
- ``state``: the machine's run locks and one :class:`RunRecord` file per run;
- ``events``: the run's structured log events, secrets masked (the command line's
  ``cli/runlog.py`` prints them);
- ``replicate``: the new snapshot sent to further destinations, each on its own;
- ``snapshot_files``: a stream backup's files handed to its source's own restore tool.
"""

from __future__ import annotations

from safehold.runs.events import LogEvent, LogSink, discard
from safehold.runs.job import SourceJob
from safehold.runs.replicate import ArchiveDestination, Destination, RepositoryDestination
from safehold.runs.source_run import OnInterrupt, run_source_backup, run_source_restore
from safehold.runs.state import RunRecord, default_state_dir

__all__ = [
    "ArchiveDestination",
    "Destination",
    "LogEvent",
    "LogSink",
    "OnInterrupt",
    "RepositoryDestination",
    "RunRecord",
    "SourceJob",
    "default_state_dir",
    "discard",
    "run_source_backup",
    "run_source_restore",
]
