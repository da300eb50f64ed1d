"""Plans, the slot ledger, runs with their log lines, workers.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

NOW = sa.text("now()")


def _created(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=NOW, nullable=False)


def _moment(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    """Create the plans, the slot ledger, runs, run lines and workers."""
    op.create_table(
        "plans",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project", sa.Text(), server_default=sa.text("'default'"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("schedule", sa.Text(), nullable=False),
        sa.Column("timezone", sa.Text(), server_default=sa.text("'UTC'"), nullable=False),
        sa.Column(
            "settings", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        _created("created_at"),
        _created("updated_at"),
        sa.CheckConstraint("origin IN ('file', 'api')", name=op.f("ck_plans_origin")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("project", "name", name=op.f("uq_plans_project_name")),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        _created("started_at"),
        _created("heartbeat_at"),
        _moment("stopped_at"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workers")),
    )
    op.create_table(
        "slots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("plan_id", sa.BigInteger(), nullable=False),
        sa.Column("slot_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        _created("created_at"),
        _moment("ended_at"),
        sa.CheckConstraint(
            "state IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'timed_out', "
            "'skipped', 'missed')",
            name=op.f("ck_slots_state"),
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_slots_plan_id_plans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slots")),
        sa.UniqueConstraint("plan_id", "slot_at", name=op.f("uq_slots_plan_id_slot_at")),
    )
    op.create_index(op.f("ix_slots_state_slot_at"), "slots", ["state", "slot_at"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("plan_id", sa.BigInteger(), nullable=False),
        sa.Column("slot_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("state", sa.Text(), server_default=sa.text("'queued'"), nullable=False),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        _created("queued_at"),
        _moment("started_at"),
        _moment("ended_at"),
        sa.Column(
            "phases", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
        sa.Column("snapshot_id", sa.Text(), nullable=True),
        sa.Column("bytes_read", sa.BigInteger(), nullable=True),
        sa.Column("bytes_added", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("hint", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('backup', 'retention', 'prune', 'drill')", name=op.f("ck_runs_kind")
        ),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'skipped', "
            "'worker_lost', 'cancelled')",
            name=op.f("ck_runs_state"),
        ),
        sa.CheckConstraint(
            "trigger IN ('schedule', 'manual', 'catch_up', 'retry')",
            name=op.f("ck_runs_trigger"),
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_runs_plan_id_plans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["slot_id"], ["slots.id"], name=op.f("fk_runs_slot_id_slots"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_plan_id_queued_at"), "runs", ["plan_id", "queued_at"])
    op.create_index(op.f("ix_runs_state"), "runs", ["state"])
    # slots and runs refer to each other: the slot's key to its run comes once both exist.
    op.create_foreign_key(
        op.f("fk_slots_run_id_runs"), "slots", "runs", ["run_id"], ["id"], ondelete="SET NULL"
    )
    op.create_table(
        "run_lines",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_lines_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_run_lines")),
    )


def downgrade() -> None:
    """Drop what :func:`upgrade` made, foreign keys first."""
    op.drop_table("run_lines")
    op.drop_constraint(op.f("fk_slots_run_id_runs"), "slots", type_="foreignkey")
    op.drop_table("runs")
    op.drop_table("slots")
    op.drop_table("workers")
    op.drop_table("plans")
