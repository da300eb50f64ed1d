"""Destinations made through the service (OSB's "endpoints"): where API plans write.

A destination is a block as one item of a configuration file's ``destinations:``
(``location``, ``password`` or ``password_env``/``_file``/``_command``, ``options``,
``max_concurrent_jobs``, ``format``), validated by the same code
(:func:`safehold.config.validate_destination`), named within its project. Its
credentials are write-only: the whole block is stored sealed with the service's key
(:mod:`.vault`), and what comes back (:class:`DestinationView`) is its name, project,
location without credentials, format and the *names* of its options. An update merges
the keys it is given over the stored block (a key given as null is removed), so a
client can change a limit without sending the password again, since it cannot read it.

A destination that an API plan writes to (as its ``repository`` or one of its
``copies``) cannot be deleted until those plans are changed or deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from safehold.config import validate_destination
from safehold.config.plans import check_project
from safehold.errors import Conflict, NotFound, UsageError
from safehold.service.vault import Vault, destination_aad
from safehold.storage.location import redact

__all__ = [
    "DestinationView",
    "check_name",
    "create_destination",
    "delete_destination",
    "destination_block",
    "get_destination",
    "list_destinations",
    "plans_using",
    "update_destination",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Kept out of the sealed block: the name is the row's, the format a column of its own.
_ROW_KEYS = ("name", "format")


@dataclass(frozen=True)
class DestinationView:
    """What may be shown of a destination: never a credential."""

    project: str
    name: str
    location: str  # redacted: no user, password or signature
    format: str
    options: list[str]  # the options' names, not their values
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The view as JSON (``--json``, the API)."""
        return {
            "project": self.project,
            "name": self.name,
            "location": self.location,
            "format": self.format,
            "options": self.options,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def check_name(what: str, name: str) -> str:
    """``name`` if it is a valid name (1-64 letters, digits, '.', '_', '-'), else an error."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(
            f"{what} name {name!r} is not valid",
            hint="a name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def _project(project: str) -> str:
    try:
        return check_project(project)
    except ValueError as exc:
        raise UsageError(f"project {project!r} is not valid", hint=str(exc)) from None


def _validated(project: str, name: str, block: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The block to seal (without name and format) and its format; errors name the key."""
    if "name" in block and block["name"] != name:
        raise UsageError(
            f"destination {project}/{name}: name: the block names another destination "
            f"({block['name']!r})",
            hint="leave name: out of the block; the destination's name is given apart",
        )
    valid = validate_destination(dict(block), where=f"destination {project}/{name}")
    sealed = {k: v for k, v in block.items() if k not in _ROW_KEYS and v is not None}
    return sealed, valid.format


def _view(row: Any) -> DestinationView:
    return DestinationView(
        project=row.project,
        name=row.name,
        location=row.display,
        format=row.format,
        options=list(row.option_names),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


_COLUMNS = "project, name, display, format, option_names, created_at, updated_at"


def create_destination(
    engine: Engine, vault: Vault, project: str, name: str, block: Mapping[str, Any]
) -> DestinationView:
    """Make destination ``name`` in ``project`` from ``block``; an error if the name is
    taken."""
    _project(project)
    check_name("destination", name)
    stored, fmt = _validated(project, name, block)
    sealed = vault.seal(json.dumps(stored).encode(), aad=destination_aad(project, name))
    with engine.begin() as db:
        row = db.execute(
            text(
                "INSERT INTO destinations (project, name, display, format, option_names, sealed) "
                "VALUES (:p, :n, :d, :f, CAST(:o AS jsonb), :s) "
                f"ON CONFLICT (project, name) DO NOTHING RETURNING {_COLUMNS}"
            ),
            {
                "p": project,
                "n": name,
                "d": redact(str(stored["location"])),
                "f": fmt,
                "o": json.dumps(sorted(stored.get("options") or {})),
                "s": sealed,
            },
        ).one_or_none()
    if row is None:
        raise Conflict(
            f"project {project} already has a destination {name!r}",
            hint="choose another name, or update that destination",
        )
    return _view(row)


def list_destinations(engine: Engine, project: str) -> list[DestinationView]:
    """The project's destinations, by name."""
    with engine.connect() as db:
        rows = db.execute(
            text(f"SELECT {_COLUMNS} FROM destinations WHERE project = :p ORDER BY name"),
            {"p": project},
        ).all()
    return [_view(row) for row in rows]


def get_destination(engine: Engine, project: str, name: str) -> DestinationView:
    """Destination ``name`` of ``project``."""
    with engine.connect() as db:
        row = db.execute(
            text(f"SELECT {_COLUMNS} FROM destinations WHERE project = :p AND name = :n"),
            {"p": project, "n": name},
        ).one_or_none()
    if row is None:
        raise _not_found(project, name)
    return _view(row)


def _not_found(project: str, name: str) -> NotFound:
    return NotFound(
        f"project {project} has no destination {name!r}",
        hint=f"list them with 'safehold destinations list --project {project}'",
    )


def destination_block(db: Connection, vault: Vault, project: str, name: str) -> dict[str, Any]:
    """The whole block of a destination, credentials included, with its format: for the
    service's own use only (to run a plan), never to show."""
    row = db.execute(
        text("SELECT format, sealed FROM destinations WHERE project = :p AND name = :n"),
        {"p": project, "n": name},
    ).one_or_none()
    if row is None:
        raise _not_found(project, name)
    block: dict[str, Any] = json.loads(vault.open(row.sealed, aad=destination_aad(project, name)))
    block["format"] = row.format
    return block


def update_destination(
    engine: Engine, vault: Vault, project: str, name: str, changes: Mapping[str, Any]
) -> DestinationView:
    """Merge ``changes`` over the stored block (a key given as null is removed) and store
    the result, validated as a new block would be."""
    with engine.begin() as db:
        db.execute(
            text("SELECT 1 FROM destinations WHERE project = :p AND name = :n FOR UPDATE"),
            {"p": project, "n": name},
        )
        merged = destination_block(db, vault, project, name)
        for key, value in changes.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        stored, fmt = _validated(project, name, merged)
        sealed = vault.seal(json.dumps(stored).encode(), aad=destination_aad(project, name))
        row = db.execute(
            text(
                "UPDATE destinations SET display = :d, format = :f, "
                "option_names = CAST(:o AS jsonb), sealed = :s, updated_at = now() "
                f"WHERE project = :p AND name = :n RETURNING {_COLUMNS}"
            ),
            {
                "p": project,
                "n": name,
                "d": redact(str(stored["location"])),
                "f": fmt,
                "o": json.dumps(sorted(stored.get("options") or {})),
                "s": sealed,
            },
        ).one()
    return _view(row)


def plans_using(db: Connection, project: str, name: str) -> list[str]:
    """The API plans of ``project`` that write to destination ``name``."""
    return list(
        db.execute(
            text(
                "SELECT name FROM plans WHERE project = :p AND origin = 'api' AND "
                "(settings->>'repository' = :n OR "
                " coalesce(settings->'copies', '[]'::jsonb) @> jsonb_build_array(CAST(:n AS text)))"
                " "
                "ORDER BY name"
            ),
            {"p": project, "n": name},
        ).scalars()
    )


def delete_destination(engine: Engine, project: str, name: str) -> None:
    """Delete destination ``name``; refused while an API plan writes to it. What was
    written there stays there."""
    with engine.begin() as db:
        found = db.execute(
            text("SELECT id FROM destinations WHERE project = :p AND name = :n FOR UPDATE"),
            {"p": project, "n": name},
        ).one_or_none()
        if found is None:
            raise _not_found(project, name)
        users = plans_using(db, project, name)
        if users:
            raise Conflict(
                f"destination {project}/{name} is used by {len(users)} plan(s)",
                hint="change or delete these plans first: " + ", ".join(users),
            )
        db.execute(text("DELETE FROM destinations WHERE id = :i"), {"i": found.id})
