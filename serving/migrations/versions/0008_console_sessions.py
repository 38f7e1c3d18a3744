"""Console sessions: the hash of each session's token, its key and when it expires.

Revision ID: s0008
Revises: s0007
"""

import sqlalchemy as sa
from alembic import op

revision = "s0008"
down_revision = "s0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "serving_console_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_serving_console_sessions_expires", "serving_console_sessions", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_serving_console_sessions_expires", "serving_console_sessions")
    op.drop_table("serving_console_sessions")
