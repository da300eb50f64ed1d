"""The catalog's tables as SQLAlchemy 2 typed models.

The migrations in ``migrations/versions`` create exactly these tables; a test compares
the two (Alembic's ``compare_metadata`` against a migrated database finds no difference),
so a change here needs its migration in the same commit.

States and kinds are text columns with a CHECK rather than PostgreSQL enum types: adding
a value is then one constraint swapped in a migration, not an ``ALTER TYPE`` that cannot
run inside a transaction on older servers.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Agent",
    "AlertDelivery",
    "Base",
    "DeliveryState",
    "Destination",
    "DestinationFormat",
    "Drill",
    "DrillPhase",
    "DrillResult",
    "Incident",
    "IncidentState",
    "Plan",
    "PlanOrigin",
    "Project",
    "Report",
    "RestorePoint",
    "Run",
    "RunKind",
    "RunLine",
    "RunState",
    "RunTrigger",
    "ServiceKey",
    "Slot",
    "SlotState",
    "Token",
    "TokenRole",
    "VerifyPack",
    "Worker",
]

# Constraint names are derived, never left to the server, so that migrations can name
# what they drop and the comparison with the models is exact.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class PlanOrigin(StrEnum):
    """Where a plan was declared."""

    FILE = "file"  # declared in the configuration file, which stays its source of truth
    API = "api"  # created at run time through the API; lives only in the catalog


class SlotState(StrEnum):
    """Where a ledger row stands; the last five states are final."""

    PENDING = "pending"  # due, nothing queued for it yet
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"  # with its reason: paused, overlap, min_interval, pre-backup-check
    MISSED = "missed"  # nothing ran it within its window


class RunKind(StrEnum):
    """What a run does."""

    BACKUP = "backup"
    RETENTION = "retention"
    PRUNE = "prune"
    DRILL = "drill"
    RESTORE = "restore"  # a restore point back into its source, or into a named target
    VERIFY = "verify"  # a slice of a repository's packs re-read (service/verify.py)


class RunTrigger(StrEnum):
    """What queued a run."""

    SCHEDULE = "schedule"
    MANUAL = "manual"
    CATCH_UP = "catch_up"
    RETRY = "retry"
    RESYNC = "resync"  # not run by the service: a snapshot found by ``catalog resync``


class RunState(StrEnum):
    """Where a run stands; all but queued and running are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    WORKER_LOST = "worker_lost"  # its worker stopped heart-beating; a retry is a new run
    CANCELLED = "cancelled"


class TokenRole(StrEnum):
    """What an API token may do, within its project (docs/api.md)."""

    ADMIN = "admin"  # everything, tokens included
    OPERATOR = "operator"  # read, and run, pause, resume, cancel
    VIEWER = "viewer"  # read only
    AGENT = "agent"  # an agent's own jobs only


def one_of(column: str, values: type[StrEnum]) -> str:
    """The CHECK condition that ``column`` holds one of ``values``."""
    listed = ", ".join(f"'{v.value}'" for v in values)
    return f"{column} IN ({listed})"


class Base(DeclarativeBase):
    """The catalog's declarative base: one metadata, its naming convention and type map."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
        list[dict[str, Any]]: JSONB,
        uuid.UUID: Uuid(),
        str: Text(),
    }


class Plan(Base):
    """A source with a schedule: from the configuration file, or created through the API."""

    __tablename__ = "plans"
    __table_args__ = (
        UniqueConstraint("project", "name"),
        CheckConstraint(one_of("origin", PlanOrigin), name="origin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    project: Mapped[str] = mapped_column(server_default=text("'default'"))
    name: Mapped[str]
    origin: Mapped[str]
    # The configuration's source name (None for a plan made through the API).
    source: Mapped[str | None]
    schedule: Mapped[str]
    timezone: Mapped[str] = mapped_column(server_default=text("'UTC'"))
    # The plan's parsed settings (retention, timeout, on_overlap, ...), as JSON.
    settings: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Slot(Base):
    """The ledger: one row per slot a plan's schedule asked for, created exactly once."""

    __tablename__ = "slots"
    __table_args__ = (
        UniqueConstraint("plan_id", "slot_at"),
        CheckConstraint(one_of("state", SlotState), name="state"),
        Index(None, "state", "slot_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    slot_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(server_default=text("'pending'"))
    reason: Mapped[str | None]
    # The run that decided the slot's state (the last attempt when retried). slots and
    # runs refer to each other, so this key is added after both tables exist.
    run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL", use_alter=True)
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    ended_at: Mapped[datetime | None]


class Run(Base):
    """One attempt at a job; its id is the run's ``backup_guid`` in logs and records."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(one_of("kind", RunKind), name="kind"),
        CheckConstraint(one_of("trigger", RunTrigger), name="trigger"),
        CheckConstraint(one_of("state", RunState), name="state"),
        Index(None, "plan_id", "queued_at"),
        Index(None, "state"),
        # The API's "is this backup managed" check (migration 0006).
        Index(None, "snapshot_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    # None for a manual run, which fills no slot.
    slot_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("slots.id", ondelete="SET NULL")
    )
    kind: Mapped[str]
    trigger: Mapped[str]
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    state: Mapped[str] = mapped_column(server_default=text("'queued'"))
    worker: Mapped[str | None]
    # procrastinate's job id, while the job is in its queue.
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    queued_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # [{phase, state, started_at, ended_at, output}], in the order they ran.
    phases: Mapped[list[dict[str, Any]]] = mapped_column(server_default=text("'[]'::jsonb"))
    snapshot_id: Mapped[str | None]
    bytes_read: Mapped[int | None] = mapped_column(BigInteger)
    bytes_added: Mapped[int | None] = mapped_column(BigInteger)
    # A backup's repository after it: the stored size of the packs its index listed (the
    # summary's repository_packs_bytes). None for other kinds and older backups.
    repository_bytes: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None]
    hint: Mapped[str | None]
    # What the job was asked, beyond its plan: a restore's snapshot, target and replace.
    params: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))


class RunLine(Base):
    """A run's log lines, numbered from 0 in the order they were written."""

    __tablename__ = "run_lines"

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    level: Mapped[str]
    message: Mapped[str]


class Worker(Base):
    """A worker process: where it runs and when it last said it was alive."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(primary_key=True)
    host: Mapped[str]
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(server_default=func.now())
    stopped_at: Mapped[datetime | None]


class RestorePoint(Base):
    """A snapshot a plan made, as the catalog knows it: where its chain stands, whether it
    is held, and whether the repository still has it.

    Written when a backup run succeeds and by ``catalog resync`` (which also finds the ones
    forgotten outside the service); the repository stays the source of truth. A held
    point is passed to every retention of its plan as ``forget --keep-id``.
    """

    __tablename__ = "restore_points"
    __table_args__ = (
        UniqueConstraint("plan_id", "snapshot_id"),
        # Listing newest first, a page at a time, reads one index range: a plan's, a
        # project's, or everything's (an admin's); never a sort of a million rows.
        Index(None, "plan_id", "taken_at", "id"),
        Index(None, "project", "taken_at", "id"),
        Index(None, "taken_at", "id"),
        Index(None, "snapshot_id"),
        # A point's chain's full: one index probe per listed point.
        Index(None, "plan_id", "chain_id", "chain_seq"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    # The plan's project, copied so that a project's listing has an index of its own
    # (a plan never changes project: another project is another plan).
    project: Mapped[str]
    snapshot_id: Mapped[str]
    # The run that made it (None: found by resync, or its run was deleted).
    run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    taken_at: Mapped[datetime]
    chain_id: Mapped[str | None]
    chain_seq: Mapped[int | None] = mapped_column(Integer)  # 0: the chain's full backup
    isolated: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    bytes_added: Mapped[int | None] = mapped_column(BigInteger)
    held_at: Mapped[datetime | None]
    held_by: Mapped[str | None]
    hold_reason: Mapped[str | None]
    # When the service learnt that the repository no longer has it (None: it has).
    forgotten_at: Mapped[datetime | None]


class Project(Base):
    """A project: the boundary of what a token sees. Plans name theirs by text (a file's
    ``project:``); this table records the projects tokens were made for."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Token(Base):
    """An API bearer token. Only the SHA-256 of its secret is kept: the secret is 32 random
    bytes, so a fast hash is enough (nothing to brute-force as a password would be), and the
    clear token is shown once, when it is made."""

    __tablename__ = "tokens"
    __table_args__ = (
        CheckConstraint(one_of("role", TokenRole), name="role"),
        Index(None, "project"),
    )

    # The token's public part (``shk_<id>_<secret>``): how a request finds its row.
    id: Mapped[str] = mapped_column(primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name", ondelete="CASCADE"))
    role: Mapped[str]
    name: Mapped[str] = mapped_column(server_default=text("''"))
    secret_sha256: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Agent(Base):
    """An agent (``safehold agent --server``): a machine that runs its plans' jobs itself,
    reached by no one, pulling them over the API with a token of role ``agent``.

    The first token that registers a name owns it: another agent token of the project
    cannot act as that agent. ``worker_id`` is the agent's procrastinate worker, which the
    server keeps alive from the agent's heartbeats, so that a silent agent's jobs are found
    stalled as a silent worker's are.
    """

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("project", "name"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name", ondelete="CASCADE"))
    name: Mapped[str]
    token_id: Mapped[str | None] = mapped_column(ForeignKey("tokens.id", ondelete="SET NULL"))
    host: Mapped[str | None]
    version: Mapped[str | None]
    worker_id: Mapped[int | None] = mapped_column(BigInteger)
    registered_at: Mapped[datetime] = mapped_column(server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(server_default=func.now())
    stopped_at: Mapped[datetime | None]


class DestinationFormat(StrEnum):
    """How a destination stores snapshots."""

    REPOSITORY = "repository"  # a safehold repository
    ARCHIVE = "archive"  # plain .tar.zst archives under PREFIX/YYYY/MM/DD/


class Destination(Base):
    """A place snapshots go, made through the service (OSB's "endpoint").

    Its whole block (location, password or how to get it, options) is ``sealed`` with the
    service's key (``safehold.service.vault``); only what may be shown is in clear: the
    location without its credentials, the format and the options' names.
    """

    __tablename__ = "destinations"
    __table_args__ = (
        UniqueConstraint("project", "name"),
        CheckConstraint(one_of("format", DestinationFormat), name="format"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    project: Mapped[str]
    name: Mapped[str]
    display: Mapped[str]  # the location, redacted
    format: Mapped[str]
    option_names: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ServiceKey(Base):
    """One row: the check value of the service's secret key (an HMAC of a fixed text
    under the key), so that a process holding another key is told so at once."""

    __tablename__ = "service_keys"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    key_check: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class IncidentState(StrEnum):
    """Whether an incident's condition still holds."""

    OPEN = "open"
    RESOLVED = "resolved"


class Incident(Base):
    """Something people were told of (service/alerts.py): a failed run, a missed slot, an
    RPO breach... keyed by (kind, project, plan, subject). While open, ``open_key`` holds
    that key, and its uniqueness is what keeps a second evaluation (or a second service)
    from opening it twice; a resolved incident's is NULL, so it may open again later."""

    __tablename__ = "incidents"
    __table_args__ = (
        CheckConstraint(one_of("state", IncidentState), name="state"),
        UniqueConstraint("open_key"),
        Index(None, "state", "opened_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str]
    project: Mapped[str]
    plan: Mapped[str] = mapped_column(server_default=text("''"))
    subject: Mapped[str] = mapped_column(server_default=text("''"))
    open_key: Mapped[str | None]
    state: Mapped[str] = mapped_column(server_default=text("'open'"))
    opened_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    run_id: Mapped[str | None]  # text: a drill's or verification's run may be another id
    phase: Mapped[str | None]
    error: Mapped[str | None]
    hint: Mapped[str | None]
    details: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))


class DeliveryState(StrEnum):
    """Where one message through one channel stands."""

    PENDING = "pending"  # to be tried at next_at
    SENT = "sent"
    FAILED = "failed"  # every attempt failed: logged, and kept here with its last error


class AlertDelivery(Base):
    """The outbox: one row per (incident event, channel), or per ping. Written in the
    transaction that opens or resolves the incident (or ends the run), sent after it, so
    that nothing is lost to a crash between the two. No secret is stored: the channel is
    named (receiver, channel), and found again in the configuration when sent."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        CheckConstraint(one_of("state", DeliveryState), name="state"),
        Index(None, "state", "next_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    incident_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("incidents.id", ondelete="CASCADE")
    )
    event: Mapped[str]  # opened | resolved | ping
    receiver: Mapped[str]  # a receiver's name; a ping's plan key
    channel: Mapped[str]  # the channel's name; a ping's start | success | fail
    state: Mapped[str] = mapped_column(server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    next_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None]
    payload: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))


class VerifyPack(Base):
    """A pack of a repository in the verification rotation: when it was first listed, and
    when a slice last read it and what that found (``ok`` or ``damaged``).

    The slices list the repository's packs each time: a new pack joins with ``last_read``
    null (read first), a pack gone from the repository (pruned) leaves.
    """

    __tablename__ = "verify_packs"
    __table_args__ = (CheckConstraint("last_result IN ('ok', 'damaged')", name="last_result"),)

    repository: Mapped[str] = mapped_column(primary_key=True)  # its location, redacted
    pack_id: Mapped[str] = mapped_column(primary_key=True)  # hex
    size: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime]
    last_read: Mapped[datetime | None]
    last_result: Mapped[str | None]  # 'ok' | 'damaged'


class DrillResult(StrEnum):
    """How a restore drill ended (``running`` while it goes on)."""

    PASSED = "passed"
    FAILED = "failed"
    RUNNING = "running"


class DrillPhase(StrEnum):
    """Where a failed drill stopped."""

    SANDBOX = "sandbox"  # the scratch server or folder could not be made
    RESTORE = "restore"  # the source's restore into the sandbox failed
    CHECK = "check"  # the restored copy did not pass its check


class Drill(Base):
    """A restore drill: a snapshot restored into a sandbox and checked, with the measured
    restore time (RTO) against the plan's target. ``run_id`` is the drill's run (kind
    ``drill``), whose phases and log lines are kept as every run's are."""

    __tablename__ = "drills"
    __table_args__ = (
        CheckConstraint(one_of("result", DrillResult), name="result"),
        CheckConstraint(
            f"failed_phase IS NULL OR {one_of('failed_phase', DrillPhase)}", name="failed_phase"
        ),
        # A plan's drills newest first (the trend, and ``rotating``'s last point).
        Index(None, "project", "plan", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    project: Mapped[str]
    plan: Mapped[str]
    snapshot_id: Mapped[str | None]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    restore_seconds: Mapped[float | None] = mapped_column(Double)
    rto_target_seconds: Mapped[float | None] = mapped_column(Double)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    result: Mapped[str]
    failed_phase: Mapped[str | None]
    check_output: Mapped[str | None]
    error: Mapped[str | None]


class Report(Base):
    """One project's periodic report (``reports:`` in the configuration): the period it
    covers and whether it went out. A row is made once its period has ended, never
    before; a failed send keeps the row unsent (``attempts``, ``last_error``) so that the
    next cycle tries again, and a sent one is never sent twice."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("project", "period_start"), Index(None, "sent_at"))

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    project: Mapped[str]
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
