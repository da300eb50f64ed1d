"""Runs may be triggered by ``resync``: a snapshot the catalog learnt from the repository.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_OLD = "trigger IN ('schedule', 'manual', 'catch_up', 'retry')"
_NEW = "trigger IN ('schedule', 'manual', 'catch_up', 'retry', 'resync')"


def upgrade() -> None:
    """Swap the runs' trigger CHECK for one that allows ``resync``."""
    op.drop_constraint(op.f("ck_runs_trigger"), "runs", type_="check")
    op.create_check_constraint(op.f("ck_runs_trigger"), "runs", _NEW)


def downgrade() -> None:
    """Back to the old CHECK; runs a resync wrote are then called manual."""
    op.execute("UPDATE runs SET trigger = 'manual' WHERE trigger = 'resync'")
    op.drop_constraint(op.f("ck_runs_trigger"), "runs", type_="check")
    op.create_check_constraint(op.f("ck_runs_trigger"), "runs", _OLD)
