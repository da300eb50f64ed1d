"""Verification coverage: runs of kind ``verify``, and the packs in the rotation.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

_OLD = "kind IN ('backup', 'retention', 'prune', 'drill', 'restore')"
_NEW = "kind IN ('backup', 'retention', 'prune', 'drill', 'restore', 'verify')"


def upgrade() -> None:
    """Allow ``verify`` runs; create ``verify_packs``."""
    op.drop_constraint(op.f("ck_runs_kind"), "runs", type_="check")
    op.create_check_constraint(op.f("ck_runs_kind"), "runs", _NEW)
    op.create_table(
        "verify_packs",
        sa.Column("repository", sa.Text(), nullable=False),
        sa.Column("pack_id", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_read", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_result", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "last_result IN ('ok', 'damaged')", name=op.f("ck_verify_packs_last_result")
        ),
        sa.PrimaryKeyConstraint("repository", "pack_id", name=op.f("pk_verify_packs")),
    )


def downgrade() -> None:
    """Drop the rotation and the verify runs with it."""
    op.drop_table("verify_packs")
    op.execute("DELETE FROM runs WHERE kind = 'verify'")
    op.drop_constraint(op.f("ck_runs_kind"), "runs", type_="check")
    op.create_check_constraint(op.f("ck_runs_kind"), "runs", _OLD)
