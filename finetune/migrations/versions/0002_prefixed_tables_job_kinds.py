"""Table names prefixed `finetune_`, a kind per job (what its worker runs), and when a job's
worker process started (so that a later process with the same pid is not taken for it).

The tables are renamed in place, so a database made by release 0.1.0 keeps every file, job,
event and checkpoint; its jobs were all LoRA / QLoRA fine-tunes (`fine-tune`).

Revision ID: f0002
Revises: f0001
"""

import sqlalchemy as sa
from alembic import op

revision = "f0002"
down_revision = "f0001"
branch_labels = None
depends_on = None

# old table -> (new table, [(old index, new index, columns)])
_RENAMES = {
    "files": ("finetune_files", []),
    "fine_tuning_jobs": (
        "finetune_jobs",
        [("ix_fine_tuning_jobs_status", "ix_finetune_jobs_status", ["status"])],
    ),
    "fine_tuning_events": (
        "finetune_job_events",
        [("ix_fine_tuning_events_job_id", "ix_finetune_job_events_job_id", ["job_id", "id"])],
    ),
    "fine_tuning_checkpoints": (
        "finetune_checkpoints",
        [
            (
                "ix_fine_tuning_checkpoints_job_id",
                "ix_finetune_checkpoints_job_id",
                ["job_id", "step"],
            )
        ],
    ),
}


def upgrade() -> None:
    for old, (new, indexes) in _RENAMES.items():
        op.rename_table(old, new)
        for old_index, new_index, columns in indexes:
            op.drop_index(old_index, table_name=new)
            op.create_index(new_index, new, columns)
    op.add_column(
        "finetune_jobs",
        sa.Column("kind", sa.String(32), nullable=False, server_default="fine-tune"),
    )
    op.add_column("finetune_jobs", sa.Column("pid_start", sa.BigInteger, nullable=True))


def downgrade() -> None:
    op.drop_column("finetune_jobs", "pid_start")
    op.drop_column("finetune_jobs", "kind")
    for old, (new, indexes) in _RENAMES.items():
        for old_index, new_index, columns in indexes:
            op.drop_index(new_index, table_name=new)
            op.create_index(old_index, new, columns)
        op.rename_table(new, old)
