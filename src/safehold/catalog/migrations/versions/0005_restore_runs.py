"""Runs may restore: kind ``restore``, and the parameters a job was given.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_OLD = "kind IN ('backup', 'retention', 'prune', 'drill')"
_NEW = "kind IN ('backup', 'retention', 'prune', 'drill', 'restore')"


def upgrade() -> None:
    """Allow ``restore`` runs, and give every run its (empty) parameters."""
    op.drop_constraint(op.f("ck_runs_kind"), "runs", type_="check")
    op.create_check_constraint(op.f("ck_runs_kind"), "runs", _NEW)
    op.add_column(
        "runs",
        sa.Column(
            "params",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    """Drop the parameters and the restore runs with them."""
    op.drop_column("runs", "params")
    op.execute("DELETE FROM runs WHERE kind = 'restore'")
    op.drop_constraint(op.f("ck_runs_kind"), "runs", type_="check")
    op.create_check_constraint(op.f("ck_runs_kind"), "runs", _OLD)
