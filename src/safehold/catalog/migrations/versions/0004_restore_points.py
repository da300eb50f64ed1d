"""Restore points: the snapshots the plans made, their chains, holds and whether they are
still in the repository.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``restore_points`` and fill it from the succeeded backup runs."""
    op.create_table(
        "restore_points",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("plan_id", sa.BigInteger(), nullable=False),
        sa.Column("project", sa.Text(), nullable=False),
        sa.Column("snapshot_id", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("chain_id", sa.Text(), nullable=True),
        sa.Column("chain_seq", sa.Integer(), nullable=True),
        sa.Column("isolated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("bytes_added", sa.BigInteger(), nullable=True),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("held_by", sa.Text(), nullable=True),
        sa.Column("hold_reason", sa.Text(), nullable=True),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["plans.id"],
            name=op.f("fk_restore_points_plan_id_plans"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_restore_points_run_id_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_restore_points")),
        sa.UniqueConstraint(
            "plan_id", "snapshot_id", name=op.f("uq_restore_points_plan_id_snapshot_id")
        ),
    )
    for columns in (
        ["plan_id", "taken_at", "id"],
        ["project", "taken_at", "id"],
        ["taken_at", "id"],
        ["snapshot_id"],
        ["plan_id", "chain_id", "chain_seq"],
    ):
        name = "ix_restore_points_" + "_".join(columns)
        op.create_index(op.f(name), "restore_points", columns)
    # What the catalog already knows: every succeeded backup run's snapshot (chains are
    # unknown to those rows; a resync fills them in).
    op.execute(
        """
        INSERT INTO restore_points (plan_id, project, snapshot_id, run_id, taken_at,
                                    bytes_added)
        SELECT r.plan_id, p.project, r.snapshot_id, r.id, coalesce(r.ended_at, r.queued_at),
               r.bytes_added
        FROM runs r JOIN plans p ON p.id = r.plan_id
        WHERE r.kind = 'backup' AND r.state = 'succeeded' AND r.snapshot_id IS NOT NULL
        ON CONFLICT DO NOTHING
        """
    )


def downgrade() -> None:
    """Drop ``restore_points`` (holds are lost with it)."""
    op.drop_table("restore_points")
