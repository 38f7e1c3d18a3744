"""A job's metadata (the client's key-value labels), and each key's file usage (files and
bytes), counted from the files already stored, so that an upload checks and reserves its
quota in one conditional update.

Revision ID: f0003
Revises: f0002
"""

import sqlalchemy as sa
from alembic import op

revision = "f0003"
down_revision = "f0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("finetune_jobs") as batch:
        batch.add_column(sa.Column("metadata", sa.JSON, nullable=True))
    op.create_index("ix_finetune_files_owner", "finetune_files", ["owner", "created_at"])
    op.create_table(
        "finetune_file_usage",
        sa.Column("owner", sa.String(32), primary_key=True),
        sa.Column("files", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO finetune_file_usage (owner, files, bytes) "
        "SELECT COALESCE(owner, ''), COUNT(*), SUM(bytes) FROM finetune_files "
        "GROUP BY COALESCE(owner, '')"
    )


def downgrade() -> None:
    op.drop_table("finetune_file_usage")
    op.drop_index("ix_finetune_files_owner", table_name="finetune_files")
    with op.batch_alter_table("finetune_jobs") as batch:
        batch.drop_column("metadata")
