"""The chat messages of each logged request, so that corrected answers become training and
evaluation rows.

Revision ID: s0004
Revises: s0003
"""

import sqlalchemy as sa
from alembic import op

revision = "s0004"
down_revision = "s0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("serving_traffic") as table:
        table.add_column(sa.Column("messages", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("serving_traffic") as table:
        table.drop_column("messages")
