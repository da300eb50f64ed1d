"""One configured source, as a run needs it: what to read, its hooks and its settings.

A :class:`SourceJob` holds no configuration models: the composition root builds it
(``safehold.app.source_job`` from the YAML file; the service will build it from its own
records), so that running a source never depends on how it was described.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from safehold.runs.replicate import Destination
from safehold.sources.base import Source
from safehold.sources.hooks import HookSpec

__all__ = ["SourceJob"]


@dataclass(frozen=True, kw_only=True)
class SourceJob:
    """Everything a run needs to know about one configured source."""

    name: str
    kind: str
    source: Source
    hooks: Mapping[str, HookSpec] = field(default_factory=dict)
    plan: str = ""  # the plan that asked for the run; "" = the source's name
    # The run's id (its backup_guid): the service chooses it, so that its catalog row and
    # the run's log lines carry the same one; None = a new random one.
    run_id: str | None = None
    host: str | None = None
    tags: list[str] = field(default_factory=list)
    chain_length: int | None = None
    isolated: bool = False  # each snapshot shares no data with any other
    timeout: float | None = None
    backup_user: str | None = None
    exit_if_in_progress: bool = False
    identifier: str | None = None
    identifier_command: str | None = None
    target_dir: str | None = None  # a tree source's folder, told to backup hooks
    secrets: list[str] = field(default_factory=list)  # masked wherever they would show
    hide_env: list[str] = field(default_factory=list)  # variables hooks must not see
    # Further places each new snapshot is sent to once the unlock hook has run.
    destinations: list[Destination] = field(default_factory=list)
