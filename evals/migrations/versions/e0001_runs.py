"""Evaluation runs and feedback.

Revision ID: e0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "e0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evals_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("suite", sa.String(64), nullable=False),
        sa.Column("suite_digest", sa.String(71), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(160), nullable=True),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("examples_path", sa.String(512), nullable=True),
        sa.Column("examples_digest", sa.String(71), nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("evals_runs_by_version", "evals_runs", ["suite_digest", "version", "status"])
    op.create_table(
        "evals_feedback",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(32), nullable=True),
        sa.Column("version", sa.String(160), nullable=False),
        sa.Column("rating", sa.Integer, nullable=True),
        sa.Column("correction", sa.Text, nullable=True),
    )
    op.create_index("evals_feedback_by_request", "evals_feedback", ["request_id"])
    op.create_index("evals_feedback_by_owner", "evals_feedback", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_table("evals_feedback")
    op.drop_index("evals_runs_by_version", "evals_runs")
    op.drop_table("evals_runs")
