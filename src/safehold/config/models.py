"""The configuration's shape: repository, destinations, and the keys every source shares.

A source block holds two kinds of keys: the common ones below (:class:`SourceCommon`:
hooks, host, tags, timeouts...) and its kind's own, validated by that kind's ``Settings``
(``safehold.sources.<kind>``). :mod:`safehold.config.load` splits a block by
:data:`COMMON_KEYS` and validates each half, so an error path always names the key the
user wrote.

A source with a ``schedule`` is a plan for ``safehold serve`` (its keys:
:mod:`safehold.config.plans`). Keys reserved for later issues (``verify`` in a source)
are accepted now, so a file written for a later version still
loads, but this version does nothing with them and says so.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from safehold.config.alerts import AlertsConfig, PingConfig
from safehold.config.drills import DrillConfig, check_drill_kind
from safehold.config.plans import (
    AGENT_NAME,
    DEFAULT_PROJECT,
    PruneConfig,
    RetentionConfig,
    Seconds,
    ServiceConfig,
    TimeZone,
    VerifyConfig,
    check_project,
    check_schedule,
    parse_seconds,
)
from safehold.config.reports import ReportsConfig
from safehold.errors import UsageError
from safehold.sources.hooks import DEFAULT_TIMEOUT, PHASES

__all__ = [
    "COMMON_KEYS",
    "RESERVED_SOURCE_KEYS",
    "RESERVED_TOP_KEYS",
    "Config",
    "DestinationConfig",
    "HookConfig",
    "HooksConfig",
    "RepositoryConfig",
    "SourceCommon",
    "SourceConfig",
    "choose_source",
    "parse_seconds",
]


def _check_executable(run: str, base_dir: str | None) -> str:
    """The command line with a relative script path made absolute; errors name the problem.

    A first word with a '/' is a path (relative ones are relative to the config file's
    folder); a bare name must be on PATH. Checked now, so a typo fails ``config check``
    rather than the first night's backup.
    """
    try:
        argv = shlex.split(run)
    except ValueError as exc:
        raise ValueError(f"cannot split the command line: {exc}") from None
    if not argv:
        raise ValueError("the command line is empty")
    prog = argv[0]
    if "/" not in prog:
        if shutil.which(prog) is None:
            raise ValueError(f"not found on PATH: {prog}")
        return run
    path = prog if os.path.isabs(prog) or base_dir is None else os.path.join(base_dir, prog)
    path = os.path.normpath(path)
    if not os.path.exists(path):
        raise ValueError(f"no such file: {path}")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise ValueError(f"not executable: {path} (chmod +x it, or fix the path)")
    if path == prog:
        return run
    return shlex.join([path, *argv[1:]])


class HookConfig(BaseModel):
    """One hook: ``run`` (a command line or script path), and how to run it.

    Written as a plain string, a hook is ``{run: <string>}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str
    timeout: Seconds = DEFAULT_TIMEOUT
    shell: bool = False  # run through /bin/sh -c (pipes, &&); off: words split like a shell
    user: str | None = None  # overrides the source's backup_user for this hook

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: object) -> object:
        return {"run": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _executable(self, info: ValidationInfo) -> HookConfig:
        if self.shell:
            return self
        base_dir = (info.context or {}).get("base_dir")
        run = _check_executable(self.run, base_dir)
        if run != self.run:
            object.__setattr__(self, "run", run)
        return self


def _phase_field(phase: str) -> Any:
    return Field(default=None, alias=phase)


class HooksConfig(BaseModel):
    """The lifecycle phases (docs/hooks.md), each optional."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    pre_backup_lock: HookConfig | None = _phase_field("pre-backup-lock")
    pre_backup_check: HookConfig | None = _phase_field("pre-backup-check")
    backup: HookConfig | None = _phase_field("backup")
    backup_cleanup: HookConfig | None = _phase_field("backup-cleanup")
    post_backup_unlock: HookConfig | None = _phase_field("post-backup-unlock")
    pre_restore_lock: HookConfig | None = _phase_field("pre-restore-lock")
    restore: HookConfig | None = _phase_field("restore")
    restore_cleanup: HookConfig | None = _phase_field("restore-cleanup")
    post_restore_unlock: HookConfig | None = _phase_field("post-restore-unlock")

    def by_phase(self) -> dict[str, HookConfig]:
        """The configured hooks keyed by phase name (``pre-backup-lock``...)."""
        found = {phase: getattr(self, phase.replace("-", "_")) for phase in PHASES}
        return {phase: hook for phase, hook in found.items() if hook is not None}


class SourceCommon(BaseModel):
    """The keys every source block may carry, whatever its ``type``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    host: str | None = None  # host name recorded in snapshots (default: this machine's)
    tags: list[str] = Field(default_factory=list)
    chain_length: int | None = Field(default=None, ge=0)
    # Each snapshot its own chain, sharing no data with any other (backup --isolated).
    isolated: bool = False
    timeout: Seconds | None = None  # the whole run, hooks included
    backup_user: str | None = None  # hooks run as this user (safehold must be root)
    exit_if_in_progress: bool = False  # False: wait for the running one to finish
    identifier: str | None = None  # carried in every log line of a run
    identifier_command: str | None = None  # ...or printed by this command at the start
    # A plan's keys (safehold.config.plans): a schedule makes the source a plan that
    # `safehold serve` runs; the others say what happens around each slot.
    timezone: TimeZone = "UTC"  # the wall clock the schedule's fields read (before schedule:
    # validation reads the fields in this order)
    schedule: str | None = None  # cron, a name or '@every' (service-backup: cron_schedule)
    project: str = DEFAULT_PROJECT
    # `safehold serve`: the agent (`safehold agent --server`) that runs this plan on its
    # machine; None: the service's own workers run it.
    agent: str | None = None
    paused: bool = False
    min_interval: Seconds | None = None  # staffeln's backup_min_interval
    # While a run of the plan is going: 'skip' the slot, or 'queue' one run behind it.
    # Default: 'skip' with exit_if_in_progress (service-backup's name), else 'queue'.
    on_overlap: Literal["skip", "queue"] | None = None
    catch_up: Literal["once", "none"] = "once"  # after a downtime: one run, or none
    start_window: Seconds | None = None  # how late a slot may start (default 1 h)
    retries: int = Field(default=0, ge=0, le=20)
    retry_delay: Seconds = 60.0  # before the first retry; doubled at each further one
    retention: RetentionConfig | None = None  # applied after each successful run
    # Alerts (docs/alerts.md): the newest restore point may be at most this old, and the
    # URLs pinged at each run's start, success and failure.
    rpo_target: Seconds | None = Field(default=None, gt=0)
    ping: PingConfig | None = None
    drill: DrillConfig | None = None  # restore drills (config/drills.py, docs/drills.md)
    # Reserved for the drills and verification issue: accepted, not acted upon.
    verify: Any = None

    @field_validator("project")
    @classmethod
    def _project_name(cls, name: str) -> str:
        return check_project(name)

    @field_validator("agent")
    @classmethod
    def _agent_name(cls, name: str | None) -> str | None:
        if name is not None and not AGENT_NAME.fullmatch(name):
            raise ValueError("an agent's name is 1-64 letters, digits, '.', '_' or '-'")
        return name

    @field_validator("schedule")
    @classmethod
    def _schedule_parses(cls, schedule: str | None, info: ValidationInfo) -> str | None:
        if schedule is not None:
            check_schedule(schedule, info.data.get("timezone", "UTC"))
        return schedule

    @property
    def overlap(self) -> Literal["skip", "queue"]:
        """``on_overlap``, with its default from ``exit_if_in_progress``."""
        if self.on_overlap is not None:
            return self.on_overlap
        return "skip" if self.exit_if_in_progress else "queue"

    @field_validator("identifier_command")
    @classmethod
    def _identifier_runs(cls, run: str | None, info: ValidationInfo) -> str | None:
        if run is None:
            return None
        return _check_executable(run, (info.context or {}).get("base_dir"))

    @model_validator(mode="after")
    def _one_identifier(self) -> SourceCommon:
        if self.identifier is not None and self.identifier_command is not None:
            raise ValueError("give identifier or identifier_command, not both")
        if self.isolated and self.chain_length is not None:
            raise ValueError("give isolated or chain_length, not both (isolated: no chains)")
        return self

    @model_validator(mode="after")
    def _drill_fits_kind(self) -> SourceCommon:
        if self.drill is not None:
            check_drill_kind(self.type, self.drill)
        return self


COMMON_KEYS = frozenset(SourceCommon.model_fields)
RESERVED_SOURCE_KEYS = ("verify",)
RESERVED_TOP_KEYS: tuple[str, ...] = ()  # alerts: is real now (config/alerts.py)


class RepositoryConfig(BaseModel):
    """Where snapshots go: a location and how to get its password."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    location: str
    password: SecretStr | None = None  # use with ${VAR}; a literal password in a file is weak
    password_file: str | None = None
    password_command: str | None = None
    password_env: str | None = None  # name of the variable holding the password
    # Backend options (credentials, endpoint...): values may be secrets, so never shown.
    options: dict[str, Any] = Field(default_factory=dict, repr=False)
    # `safehold serve`: at most this many runs write to this repository (or destination)
    # at once, across every worker and machine (fifty plans must not open fifty uploads
    # to one bucket).
    max_concurrent_jobs: int | None = Field(default=None, ge=1, le=1000)
    # `safehold serve`: prune this repository on its own schedule (PruneConfig).
    prune: PruneConfig | None = None
    # `safehold serve`: re-read this repository's packs in slices (VerifyConfig).
    verify: VerifyConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: object) -> object:
        return {"location": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_password_source(self) -> RepositoryConfig:
        given = [
            name
            for name in ("password", "password_file", "password_command", "password_env")
            if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give one way to get the password, not {' and '.join(given)}")
        return self


class DestinationConfig(RepositoryConfig):
    """A further place each snapshot is copied to (issue 3 does the copying).

    ``format: archive`` asks for the plain-archive layout (one ``.tar.zst`` per run under
    ``PREFIX/YYYY/MM/DD/``), readable without safehold; its own settings go in ``options``.
    """

    name: str | None = None  # shown in log lines about this destination
    format: Literal["repository", "archive"] = "repository"

    @model_validator(mode="after")
    def _prune_on_the_repository(self) -> DestinationConfig:
        if self.prune is not None:
            raise ValueError("prune belongs in the repository: block")
        if self.verify is not None:
            raise ValueError("verify belongs in the repository: block")
        return self


@dataclass(frozen=True)
class SourceConfig:
    """One validated source block: its common keys and its kind's ``Settings``."""

    name: str
    kind: str
    common: SourceCommon
    settings: BaseModel
    line: int | None = None  # where the block starts in the file


@dataclass(frozen=True)
class Config:
    """A validated configuration file."""

    path: str
    repository: RepositoryConfig | None
    destinations: list[DestinationConfig]
    sources: dict[str, SourceConfig]
    warnings: list[str] = field(default_factory=list)
    reserved: dict[str, Any] = field(default_factory=dict, repr=False)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    alerts: AlertsConfig | None = None  # the alerts: block (config/alerts.py)
    reports: ReportsConfig | None = None  # the periodic reports (config/reports.py)

    @property
    def plans(self) -> dict[str, SourceConfig]:
        """The sources with a ``schedule``: what ``safehold serve`` runs."""
        return {n: s for n, s in self.sources.items() if s.common.schedule is not None}


def choose_source(config: Config, name: str | None) -> SourceConfig:
    """The source called ``name``; without a name, the file's only source."""
    if name is None:
        if len(config.sources) == 1:
            return next(iter(config.sources.values()))
        raise UsageError(
            f"{config.path} has {len(config.sources)} sources; say which one",
            hint="add --source NAME (one of: " + ", ".join(config.sources) + ")"
            if config.sources
            else "add a sources: section to the file",
        )
    found = config.sources.get(name)
    if found is None:
        raise UsageError(
            f"no source {name!r} in {config.path}",
            hint="its sources are: " + (", ".join(config.sources) or "none"),
        )
    return found
