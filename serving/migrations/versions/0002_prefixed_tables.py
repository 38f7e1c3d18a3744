"""Table names prefixed `serving_`, renamed in place: a database made by release 0.1.0
keeps every key and traffic record.

Revision ID: s0002
Revises: s0001
"""

from alembic import op

revision = "s0002"
down_revision = "s0001"
branch_labels = None
depends_on = None

_INDEXES = [
    ("ix_traffic_created_at", "ix_serving_traffic_created_at", ["created_at"]),
    (
        "ix_traffic_version_created_at",
        "ix_serving_traffic_version_created_at",
        ["version", "created_at"],
    ),
]


def upgrade() -> None:
    op.rename_table("api_keys", "serving_api_keys")
    op.rename_table("traffic", "serving_traffic")
    for old, new, columns in _INDEXES:
        op.drop_index(old, table_name="serving_traffic")
        op.create_index(new, "serving_traffic", columns)


def downgrade() -> None:
    for old, new, columns in _INDEXES:
        op.drop_index(new, table_name="serving_traffic")
        op.create_index(old, "serving_traffic", columns)
    op.rename_table("serving_traffic", "traffic")
    op.rename_table("serving_api_keys", "api_keys")
