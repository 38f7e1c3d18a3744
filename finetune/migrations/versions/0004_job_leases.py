"""Jobs are leased (core.leases) by the worker that runs them: its renewals replace the
heartbeat (`heartbeat_at` stays, unused: dropping it would rebuild the table on SQLite, which
other tables reference), and its epoch fences every change it makes. Each job keeps the seconds its
workers trained it, for the wall-time budget.

Revision ID: f0004
Revises: f0003
"""

import sqlalchemy as sa
from alembic import op

revision = "f0004"
down_revision = "f0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("finetune_jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(160), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lease_epoch", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("run_seconds", sa.Float, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("finetune_jobs") as batch:
        for column in ("run_seconds", "lease_epoch", "lease_until", "lease_owner"):
            batch.drop_column(column)
