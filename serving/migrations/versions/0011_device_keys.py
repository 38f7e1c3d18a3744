"""The device scope of API keys: a key `llm-serve edge add` made for an edge device may call
only the edge routes. The keys of existing devices get it, and a rate limit where they had
none (120 requests per minute, the default for new device keys).

Revision ID: s0011
Revises: s0010
"""

import sqlalchemy as sa
from alembic import op

revision = "s0011"
down_revision = "s0010"
branch_labels = None
depends_on = None

DEVICE_RPM = 120  # as serving.edge.protocol.DEVICE_RPM was when this ran


def upgrade() -> None:
    with op.batch_alter_table("serving_api_keys") as batch:
        batch.add_column(sa.Column("device", sa.Boolean, nullable=False, server_default=sa.false()))
    keys = sa.table(
        "serving_api_keys",
        sa.column("id", sa.String),
        sa.column("device", sa.Boolean),
        sa.column("rpm", sa.Integer),
    )
    devices = sa.table("serving_edge_devices", sa.column("key_id", sa.String))
    of_devices = keys.c.id.in_(sa.select(devices.c.key_id))
    op.execute(keys.update().where(of_devices).values(device=True))
    op.execute(keys.update().where(of_devices, keys.c.rpm.is_(None)).values(rpm=DEVICE_RPM))


def downgrade() -> None:
    with op.batch_alter_table("serving_api_keys") as batch:
        batch.drop_column("device")
