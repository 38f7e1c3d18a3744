"""Drift checks, the embedding cache, the continuous-training loop's events.

Revision ID: e0003
Revises: e0002
"""

import sqlalchemy as sa
from alembic import op

revision = "e0003"
down_revision = "e0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evals_embeddings",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "evals_drift_checks",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(160), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_n", sa.Integer, nullable=False),
        sa.Column("reference", sa.JSON, nullable=False),
        sa.Column("signals", sa.JSON, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("drifted", sa.Boolean, nullable=False),
        sa.Column("alarms", sa.JSON, nullable=False),
    )
    op.create_index("evals_drift_checks_by_model", "evals_drift_checks", ["model", "created_at"])
    op.create_table(
        "evals_loop_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cycle", sa.String(40), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("ref", sa.String(256), nullable=True),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("evals_loop_events_by_model", "evals_loop_events", ["model", "created_at"])


def downgrade() -> None:
    op.drop_index("evals_loop_events_by_model", "evals_loop_events")
    op.drop_table("evals_loop_events")
    op.drop_index("evals_drift_checks_by_model", "evals_drift_checks")
    op.drop_table("evals_drift_checks")
    op.drop_table("evals_embeddings")
