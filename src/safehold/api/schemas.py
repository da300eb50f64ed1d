"""The API's request and response bodies (pydantic); their JSON Schema is the OpenAPI
document's (docs/openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "Managed",
    "PlanOut",
    "ProjectOut",
    "Ready",
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
RunKindName = Literal["backup", "retention", "prune", "drill", "restore"]
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
