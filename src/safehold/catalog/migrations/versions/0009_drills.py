"""Restore drills: what each drill proved, how long the restore took, and its check's output.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``drills``."""
    op.create_table(
        "drills",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("project", sa.Text(), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("snapshot_id", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("restore_seconds", sa.Double(), nullable=True),
        sa.Column("rto_target_seconds", sa.Double(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("failed_phase", sa.Text(), nullable=True),
        sa.Column("check_output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "result IN ('passed', 'failed', 'running')", name=op.f("ck_drills_result")
        ),
        sa.CheckConstraint(
            "failed_phase IS NULL OR failed_phase IN ('sandbox', 'restore', 'check')",
            name=op.f("ck_drills_failed_phase"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_drills_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drills")),
    )
    op.create_index(
        op.f("ix_drills_project_plan_started_at"),
        "drills",
        ["project", "plan", "started_at"],
        unique=False,
    )


def downgrade() -> None:
    """Drop ``drills`` (the drills' history goes with it)."""
    op.drop_index(op.f("ix_drills_project_plan_started_at"), table_name="drills")
    op.drop_table("drills")
