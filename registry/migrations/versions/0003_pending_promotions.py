"""Pending promotions: a promotion one admin requests and a second approves or rejects.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_pending_promotions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), sa.ForeignKey("registry_models.name"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("requested_by", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("gate", sa.JSON, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(256), nullable=True),
        sa.Column("decision_reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_id", sa.Integer, sa.ForeignKey("registry_alias_events.id"), nullable=True),
    )
    op.create_index(
        "ix_registry_pending_promotions_name_status",
        "registry_pending_promotions",
        ["name", "status", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_registry_pending_promotions_name_status", "registry_pending_promotions")
    op.drop_table("registry_pending_promotions")
