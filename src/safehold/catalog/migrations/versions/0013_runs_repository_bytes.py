"""Runs record the size of their repository's packs after a backup (issue 19: the
repository's stored bytes for every repository, not only the verified ones).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add ``runs.repository_bytes`` (NULL: not a backup, or one from before this)."""
    op.add_column("runs", sa.Column("repository_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Drop ``runs.repository_bytes``."""
    op.drop_column("runs", "repository_bytes")
