"""The teach scope of API keys: whether the corrections a key gives through `/v1/feedback`
may train models. Existing keys do not have it.

Revision ID: s0010
Revises: s0009
"""

import sqlalchemy as sa
from alembic import op

revision = "s0010"
down_revision = "s0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("serving_api_keys") as batch:
        batch.add_column(sa.Column("teach", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("serving_api_keys") as batch:
        batch.drop_column("teach")
