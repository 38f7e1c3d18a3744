"""API keys record who made them, and who made the keys that made them (`made_by`), so that
an admin cannot approve their own promotion request with a key they made after asking. Keys
made before this revision have no record (null).

Revision ID: s0013
Revises: s0012
"""

import sqlalchemy as sa
from alembic import op

revision = "s0013"
down_revision = "s0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("serving_api_keys") as batch:
        batch.add_column(sa.Column("made_by", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("serving_api_keys") as batch:
        batch.drop_column("made_by")
