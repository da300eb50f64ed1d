"""The catalog's schema, brought up (or down) to a revision by Alembic, from code.

The migrations ship inside the package (``migrations/env.py``, ``migrations/versions/``)
and run on a connection the caller opened, in the caller's transaction: users need no
``alembic.ini``, and the service holds its advisory lock around the whole upgrade
(:func:`safehold.service.database.open_database`). Alembic's own version table is named
for safehold, since a shared database may hold other programs' Alembic histories.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

__all__ = ["MIGRATIONS", "VERSION_TABLE", "current", "downgrade", "head", "upgrade"]

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "safehold_catalog_version"


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # env.py runs the migrations on this connection, inside its transaction.
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Migrate the catalog up to ``revision`` (every migration not yet applied)."""
    command.upgrade(_config(connection), revision)


def downgrade(connection: Connection, revision: str) -> None:
    """Migrate the catalog down to ``revision`` (``"base"``: no catalog tables at all)."""
    command.downgrade(_config(connection), revision)


def current(connection: Connection) -> str | None:
    """The revision the database is at; None before the first migration."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def head() -> str:
    """The newest revision this version of safehold ships."""
    found = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert found is not None  # the package ships at least one migration
    return found
