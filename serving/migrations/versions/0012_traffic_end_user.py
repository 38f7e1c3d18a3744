"""The traffic log keeps the `user` a request named (OpenAI's end-user id), as `end_user`
(`user` is a reserved word in PostgreSQL).

Revision ID: s0012
Revises: s0011
"""

import sqlalchemy as sa
from alembic import op

revision = "s0012"
down_revision = "s0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("serving_traffic") as batch:
        batch.add_column(sa.Column("end_user", sa.String(256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("serving_traffic") as batch:
        batch.drop_column("end_user")
