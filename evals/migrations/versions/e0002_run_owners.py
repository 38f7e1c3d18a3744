"""Evaluation runs over HTTP: the key that owns a run, the process that runs it, its name,
metadata and pass/fail summary.

Revision ID: e0002
Revises: e0001
"""

import sqlalchemy as sa
from alembic import op

revision = "e0002"
down_revision = "e0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evals_runs") as batch:
        batch.add_column(sa.Column("owner", sa.String(32), nullable=True))
        batch.add_column(sa.Column("worker", sa.String(160), nullable=True))
        batch.add_column(sa.Column("name", sa.String(256), nullable=True))
        batch.add_column(sa.Column("metadata", sa.JSON, nullable=True))
        batch.add_column(sa.Column("summary", sa.JSON, nullable=True))
    op.create_index("evals_runs_by_suite", "evals_runs", ["suite", "created_at"])


def downgrade() -> None:
    op.drop_index("evals_runs_by_suite", "evals_runs")
    with op.batch_alter_table("evals_runs") as batch:
        for column in ("summary", "metadata", "name", "worker", "owner"):
            batch.drop_column(column)
