"""Who gave each piece of feedback, whether that key may teach (its corrections may train
models), and an admin's review of it.

Feedback on requests made without a key came from the operator of a gateway without keys
(or an admin), so it keeps teaching; every other correction given before this revision came
from a key nobody allowed to teach, and no longer trains. Who gave earlier feedback was not
recorded: `given_by` stays empty for it.

Revision ID: e0004
Revises: e0003
"""

import sqlalchemy as sa
from alembic import op

revision = "e0004"
down_revision = "e0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evals_feedback") as batch:
        batch.add_column(sa.Column("given_by", sa.String(32), nullable=True))
        batch.add_column(sa.Column("teach", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(
            sa.Column("review", sa.String(16), nullable=False, server_default="pending")
        )
        batch.add_column(sa.Column("reviewed_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
    feedback = sa.table(
        "evals_feedback", sa.column("owner", sa.String), sa.column("teach", sa.Boolean)
    )
    op.execute(feedback.update().where(feedback.c.owner.is_(None)).values(teach=True))
    op.create_index("evals_feedback_by_giver", "evals_feedback", ["given_by", "created_at"])


def downgrade() -> None:
    op.drop_index("evals_feedback_by_giver", "evals_feedback")
    with op.batch_alter_table("evals_feedback") as batch:
        for column in ("reviewed_at", "reviewed_by", "review", "teach", "given_by"):
            batch.drop_column(column)
