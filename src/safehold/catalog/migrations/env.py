"""Alembic's entry for the catalog: runs the migrations on the caller's connection.

Only :mod:`safehold.catalog.migrate` runs this file; it passes the connection (already in
a transaction, under the service's advisory lock) in ``config.attributes``. There is no
offline (SQL script) mode.
"""

from __future__ import annotations

from alembic import context

from safehold.catalog.migrate import VERSION_TABLE
from safehold.catalog.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the catalog's migrations run through safehold.catalog.migrate only")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
