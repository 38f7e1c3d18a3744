"""Evaluation runs are leased (core.leases) and keep what they scored so far, so that a run
whose worker stopped is resumed by another one instead of failed.

Revision ID: e0005
Revises: e0004
"""

import sqlalchemy as sa
from alembic import op

revision = "e0005"
down_revision = "e0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evals_runs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(160), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lease_epoch", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "evals_run_progress",
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("slot", sa.String(32), primary_key=True),
        sa.Column("output", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("evals_run_progress")
    with op.batch_alter_table("evals_runs") as batch:
        for column in ("lease_epoch", "lease_until", "lease_owner"):
            batch.drop_column(column)
