"""The API's request and response bodies (pydantic); their JSON Schema is the OpenAPI
document's (docs/openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "AgentBeat",
    "AgentEnd",
    "AgentEnded",
    "AgentJob",
    "AgentLine",
    "AgentLines",
    "AgentOut",
    "AgentRegister",
    "AgentRegistered",
    "DestinationChanges",
    "DestinationIn",
    "DestinationOut",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "HoldRequest",
    "Managed",
    "PlanBlock",
    "PlanDefinition",
    "PlanOut",
    "PlanUpdate",
    "ProjectOut",
    "Ready",
    "RestoreJobCreate",
    "RestorePointOut",
    "RestorePointPage",
    "RestoreRequest",
    "RunDetail",
    "RunLineOut",
    "RunOut",
    "RunPage",
    "RunQueued",
    "SlotOut",
    "SlotPage",
    "TokenCreate",
    "TokenCreated",
    "TokenOut",
]

RunStateName = Literal[
    "queued", "running", "succeeded", "failed", "timed_out", "skipped", "worker_lost",
    "cancelled",
]  # fmt: skip
RunKindName = Literal["backup", "retention", "prune", "drill", "restore", "verify"]
RoleName = Literal["admin", "operator", "viewer", "agent"]
# Text that reaches the catalog: PostgreSQL's text holds no NUL, and a label needs no
# control character.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class ErrorDetail(BaseModel):
    """What went wrong: a stable code to act on, a message and a hint for people."""

    code: str = Field(examples=["not_found"])
    message: str
    hint: str | None = None


class ErrorBody(BaseModel):
    """Every failed call's body."""

    error: ErrorDetail


class Health(BaseModel):
    """The process answers."""

    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    """The database answers and its catalog is at the revision this safehold ships."""

    status: Literal["ready"] = "ready"
    catalog_revision: str


class PlanOut(BaseModel):
    """A plan, with what the ledger says of it."""

    name: str
    project: str
    origin: Literal["file", "api"]
    kind: RunKindName
    read_only: bool = Field(description="declared in the configuration file: the API may "
                            "run, pause and resume it, not change or delete it")  # fmt: skip
    schedule: str
    paused: bool
    next_slot: datetime | None
    last_state: str | None
    last_slot: datetime | None
    last_success: datetime | None
    rpo_seconds: float | None = Field(description="age of the newest successful backup")
    missed: int
    failed: int


class RunQueued(BaseModel):
    """A run queued by ``run now``."""

    plan: str
    run_id: str
    state: Literal["queued"] = "queued"


class SlotOut(BaseModel):
    """One row of a plan's ledger."""

    id: int
    slot_at: datetime
    state: str
    reason: str | None
    run_id: str | None
    created_at: datetime
    ended_at: datetime | None


class SlotPage(BaseModel):
    """A page of the ledger, newest slot first; ``next_cursor`` fetches the next page."""

    items: list[SlotOut]
    next_cursor: str | None


class RunOut(BaseModel):
    """One run: one attempt at a plan's job."""

    id: str
    plan: str
    kind: RunKindName
    trigger: str
    attempt: int
    state: RunStateName
    worker: str | None
    queued_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    duration_s: float | None
    snapshot_id: str | None
    bytes_read: int | None
    bytes_added: int | None
    error: str | None
    hint: str | None
    slot_at: datetime | None
    reason: str | None


class RunPage(BaseModel):
    """A page of runs, newest first; ``next_cursor`` fetches the next page."""

    items: list[RunOut]
    next_cursor: str | None


class RunLineOut(BaseModel):
    """A run's log line."""

    at: datetime
    level: str
    message: str


class RunDetail(RunOut):
    """A run with its phases (hooks and their output) and log lines."""

    phases: list[dict[str, Any]]
    lines: list[RunLineOut]


class Managed(BaseModel):
    """Whether safehold manages a backup (a snapshot id, or a run id): staffeln's check."""

    backup_id: str
    managed: bool
    run_id: str | None = None
    plan: str | None = None


class ProjectOut(BaseModel):
    """A project: the boundary of what a token sees."""

    name: str
    plans: int
    tokens: int


class TokenOut(BaseModel):
    """A token, without its secret (which is not kept)."""

    id: str
    project: str
    role: RoleName
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreate(BaseModel):
    """A token to make in the caller's project."""

    model_config = ConfigDict(extra="forbid")

    role: RoleName
    name: str = Field(default="", max_length=200, pattern=PRINTABLE)


class TokenCreated(TokenOut):
    """A token just made: ``token`` is shown this once and never again."""

    token: str


# An agent's name, as its token registers it (also a plan's ``agent:``).
AGENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# A log line: any text but NUL, which PostgreSQL's text cannot hold.
NO_NUL = r"^[^\x00]*$"


class AgentRegister(BaseModel):
    """An agent says who it is; its token's first registration binds the name to it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=AGENT_NAME, examples=["redis-vm-1"])
    host: str = Field(default="", max_length=255, pattern=PRINTABLE)
    version: str = Field(default="", max_length=64, pattern=PRINTABLE)


class AgentRegistered(BaseModel):
    """The registration: the agent's name, project, and how often to heart-beat."""

    name: str
    project: str
    heartbeat_every: float


class AgentBeat(BaseModel):
    """A heartbeat's answer: the runs the agent must stop (cancelled meanwhile)."""

    abort: list[str]


class AgentJob(BaseModel):
    """A job for the agent: what to run, claimed for it."""

    run_id: str
    kind: RunKindName
    plan: str  # PROJECT/NAME
    source: str  # the source's name in the agent's configuration file
    attempt: int
    timeout: float | None
    params: dict[str, Any]
    held: list[str] = Field(default_factory=list)  # a retention keeps these snapshots
    # A plan made through the API: its configuration document (credentials stand in it as
    # ${SAFEHOLD_SECRET_N}) and those variables' values, for the child's environment only.
    config: str | None = None
    env: dict[str, str] = Field(default_factory=dict)


class AgentLine(BaseModel):
    """One log line of a running run."""

    model_config = ConfigDict(extra="forbid")

    at: datetime | None = None
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str = Field(max_length=65536, pattern=NO_NUL)


class AgentLines(BaseModel):
    """Log lines of a running run, in order."""

    model_config = ConfigDict(extra="forbid")

    lines: list[AgentLine] = Field(max_length=1000)


class AgentEnd(BaseModel):
    """How the run's child ended on the agent."""

    model_config = ConfigDict(extra="forbid")

    exit_code: int
    record: dict[str, Any] | None = None  # the child's run record (its --json output)
    killed: bool = False  # stopped by the agent past its time-out
    stderr_tail: list[str] = Field(default_factory=list, max_length=40)


class AgentEnded(BaseModel):
    """The run's end as the catalog took it (``recorded``: false if it had ended before:
    cancelled, or reaped as lost)."""

    run_id: str
    state: RunStateName
    recorded: bool


class AgentOut(BaseModel):
    """An agent as listed: online (heart-beat within the stall window), stopped, or lost."""

    name: str
    project: str
    host: str | None
    version: str | None
    status: Literal["online", "stopped", "lost"]
    registered_at: datetime
    heartbeat_at: datetime
    running: int


class RestorePointOut(BaseModel):
    """A snapshot a plan made: its chain, its hold, and whether the repository has it."""

    id: int
    project: str
    plan: str
    snapshot_id: str
    run_id: str | None
    taken_at: datetime
    chain_id: str | None
    chain_seq: int | None  # 0: the chain's full backup
    full: str | None  # the snapshot id of its chain's full backup
    isolated: bool
    bytes_added: int | None
    held: bool
    held_at: datetime | None
    held_by: str | None
    hold_reason: str | None
    forgotten_at: datetime | None  # the repository no longer has it


class RestorePointPage(BaseModel):
    """A page of restore points, newest first; ``next_cursor`` fetches the next page."""

    items: list[RestorePointOut]
    next_cursor: str | None


class HoldRequest(BaseModel):
    """Why a restore point is held (kept from its plan's retention until released)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500, pattern=PRINTABLE)


class RestoreRequest(BaseModel):
    """Where a restore job restores a point: the source's own place (no target), or a
    target (a folder for a directory source, a database name for a database)."""

    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(default=None, max_length=4096, pattern=PRINTABLE)
    replace: bool = False
    # Only these files or folders of the point (paths as GET .../files names them): a
    # folder source's partial restore, into a new target.
    paths: list[Annotated[str, Field(max_length=4096, pattern=PRINTABLE)]] | None = Field(
        default=None, max_length=100
    )


class WorkerOut(BaseModel):
    """One ``safehold serve`` process."""

    name: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool


class BackupJobCreate(BaseModel):
    """A backup job (the OSB backup manager's name): which plan, now."""

    model_config = ConfigDict(extra="forbid")

    plan: str = Field(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RestoreJobCreate(RestoreRequest):
    """A restore job (the OSB backup manager's name): which point, where to."""

    restore_point: str = Field(max_length=64, pattern=r"^[0-9a-fA-F]+$|^[0-9]+$")


NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a destination's or an API plan's name


def no_nul(value: Any, depth: int = 0) -> Any:
    """``value`` if no text in it holds NUL (PostgreSQL's text and JSON cannot) and it
    nests at most 32 deep; else a ValueError (422)."""
    if depth > 32:
        raise ValueError("nested too deep")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("text may not hold a NUL character")
    if isinstance(value, dict):
        for key, item in value.items():
            no_nul(key, depth + 1)
            no_nul(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            no_nul(item, depth + 1)
    return value


class _FreeBlock(BaseModel):
    """A block whose keys are the configuration file's (checked by its own validation)."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _printable(self) -> _FreeBlock:
        no_nul(self.model_dump())
        return self


class DestinationIn(BaseModel):
    """A destination: a repository block as the configuration file's. The credentials
    (``password``, ``options``' secrets) are sealed and never returned."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    location: str = Field(max_length=4096, pattern=PRINTABLE)
    format: Literal["repository", "archive"] | None = None
    password: str | None = Field(default=None, max_length=4096, pattern=PRINTABLE)
    password_env: str | None = Field(default=None, max_length=200, pattern=PRINTABLE)
    password_file: str | None = Field(default=None, max_length=4096, pattern=PRINTABLE)
    password_command: str | None = Field(default=None, max_length=4096, pattern=PRINTABLE)
    options: dict[str, Any] | None = None
    max_concurrent_jobs: int | None = Field(default=None, ge=1, le=1000)

    @field_validator("options")
    @classmethod
    def _printable(cls, options: dict[str, Any] | None) -> dict[str, Any] | None:
        return no_nul(options)  # type: ignore[no-any-return]


class DestinationChanges(_FreeBlock):
    """Keys of a destination's block to change (null removes one)."""


class DestinationOut(BaseModel):
    """A destination as shown: its location without credentials, its options' names."""

    project: str
    name: str
    location: str
    format: str
    options: list[str]
    created_at: datetime
    updated_at: datetime


class PlanUpdate(_FreeBlock):
    """A plan's whole new block (``repository``, ``copies`` and the source's keys)."""


class PlanBlock(_FreeBlock):
    """A plan made through the API: ``name``, ``repository`` (a destination of the
    project), optional ``copies``, and the source block's keys as the configuration
    file's (``type``, its settings, ``hooks``, ``schedule``, ``retention``...)."""

    name: str = Field(pattern=NAME)
    repository: str = Field(pattern=NAME)
    type: str = Field(max_length=64, pattern=PRINTABLE)
    schedule: str = Field(max_length=200, pattern=PRINTABLE)
    copies: list[str] = Field(default_factory=list)


class PlanDefinition(BaseModel):
    """A plan's definition as stored: its source block with secrets as ``<sealed>``."""

    project: str
    name: str
    origin: Literal["file", "api"]
    schedule: str
    timezone: str
    paused: bool
    repository: str | None
    copies: list[str]
    source: dict[str, Any] | None
