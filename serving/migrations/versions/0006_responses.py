"""Stored responses of the Responses API, with the conversation each one ends.

Revision ID: s0006
Revises: s0005
"""

import sqlalchemy as sa
from alembic import op

revision = "s0006"
down_revision = "s0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "serving_responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
        sa.Column("conversation", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("serving_responses")
