"""The catalog: the service's state in PostgreSQL (SQLAlchemy 2 models, Alembic migrations).

Concepts:

- **Plan** (:class:`Plan`): a source with a schedule, from the configuration file (which
  stays its source of truth) or created through the API, unique by project and name.
- **Slot** (:class:`Slot`): the ledger. One row for every slot a plan's schedule asked
  for, unique by plan and time however many processes tick, ending in one state
  (succeeded, failed, timed out, skipped with its reason, or missed).
- **Run** (:class:`Run`): one attempt at a job (backup, retention, prune, drill), with its
  phases, bytes, snapshot and error; its id is the ``backup_guid`` of logs.
  :class:`RunLine` holds its log lines.
- **Restore point** (:class:`RestorePoint`): a snapshot a plan made, with its chain, its
  hold, and whether the repository still has it.
- **Worker** (:class:`Worker`): a process that runs jobs, and its last heartbeat.
- **Project** and **Token** (:class:`Project`, :class:`Token`): the API's bearer tokens,
  each of one project and one role (:class:`TokenRole`), kept as a hash of the secret.
- **Destination** (:class:`Destination`): a place snapshots go, made through the service,
  its credentials sealed with the service's key; :class:`ServiceKey` holds that key's
  check value.
- **Verified pack** (:class:`VerifyPack`): a repository's pack in the verification
  rotation, with when a slice last read it and what that found.

The repositories stay the source of truth for snapshots; the catalog records what the
service did. This package sits on the ground floor: it imports nothing of safehold's but
the errors, ids and clock (an import-linter contract), so that any layer may read it.
The schema changes only through :mod:`safehold.catalog.migrate`.
"""

from __future__ import annotations

from safehold.catalog.models import (
    Agent,
    Base,
    Destination,
    DestinationFormat,
    Plan,
    PlanOrigin,
    Project,
    RestorePoint,
    Run,
    RunKind,
    RunLine,
    RunState,
    RunTrigger,
    ServiceKey,
    Slot,
    SlotState,
    Token,
    TokenRole,
    VerifyPack,
    Worker,
)

__all__ = [
    "Agent",
    "Base",
    "Destination",
    "DestinationFormat",
    "Plan",
    "PlanOrigin",
    "Project",
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
