"""Batch leases get a fencing epoch (core.leases): a gateway whose lease was taken over can
no longer write a line's result or end the batch.

Revision ID: s0009
Revises: s0008
"""

import sqlalchemy as sa
from alembic import op

revision = "s0009"
down_revision = "s0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("serving_batches") as batch:
        batch.alter_column(
            "lease_owner", existing_type=sa.String(64), type_=sa.String(160), nullable=True
        )
        batch.add_column(sa.Column("lease_epoch", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("serving_batches") as batch:
        batch.drop_column("lease_epoch")
        batch.alter_column(
            "lease_owner", existing_type=sa.String(160), type_=sa.String(64), nullable=True
        )
