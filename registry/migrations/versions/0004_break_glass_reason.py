"""Alias events record the break-glass reason of a move of a two-person alias that no second
admin approved (null for every other move).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registry_alias_events") as batch:
        batch.add_column(sa.Column("break_glass_reason", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry_alias_events") as batch:
        batch.drop_column("break_glass_reason")
