"""Traffic records found by request id (feedback names the request it is about).

Revision ID: s0003
Revises: s0002
"""

from alembic import op

revision = "s0003"
down_revision = "s0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_serving_traffic_request_id", "serving_traffic", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_serving_traffic_request_id", "serving_traffic")
