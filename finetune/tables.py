"""The fine-tuning tables (files and each key's usage of them, jobs, their events and
checkpoints), prefixed `finetune_`, in the stack's database, with their own migration chain in
`finetune/migrations`."""

from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from core.leases import lease_columns
from core.migrations import MigrationChain

CHAIN = MigrationChain(
    "finetune", Path(__file__).parent / "migrations", version_table="finetune_alembic_version"
)

metadata = MetaData()

files = Table(
    "finetune_files",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("path", String(512), nullable=False),  # relative to LLMOPS_HOME
    Column("sha256", String(71), nullable=False),
    Column("owner", String(32), nullable=True),  # API key id; None: made without keys
    Index("ix_finetune_files_owner", "owner", "created_at"),
)

file_usage = Table(
    "finetune_file_usage",
    metadata,
    Column("owner", String(32), primary_key=True),  # API key id; "": made without keys
    Column("files", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)

jobs = Table(
    "finetune_jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(32), nullable=False, server_default="fine-tune"),  # finetune/kinds.py
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False),
    Column("model", String(256), nullable=False),  # the base reference as given
    Column("suffix", String(64), nullable=True),
    Column("recipe", JSON, nullable=False),  # the validated recipe, overrides applied
    Column("training_file", String(40), nullable=True),
    Column("validation_file", String(40), nullable=True),
    Column("hyperparameters", JSON, nullable=False),
    Column("fine_tuned_model", String(256), nullable=True),
    Column("registered_version", String(160), nullable=True),
    Column("error", JSON, nullable=True),  # {"code", "message", "param"}
    Column("attempts", Integer, nullable=False),
    Column("pid", Integer, nullable=True),
    Column("host", String(255), nullable=True),
    Column("pid_start", BigInteger, nullable=True),  # when the worker process started
    # Unused since f0004, where the lease's `lease_until` took its place: dropping it would
    # rebuild the table on SQLite, which its events and checkpoints reference.
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    *lease_columns(),  # the worker running it (core.leases)
    # Seconds its workers trained it, over the attempts that ended (the wall-time budget).
    Column("run_seconds", Float, nullable=False, server_default="0"),
    Column("trained_tokens", Integer, nullable=True),
    Column("metrics", JSON, nullable=True),
    Column("owner", String(32), nullable=True),  # API key id; None: made without keys
    Column("metadata", JSON, nullable=True),  # the client's key-value labels
    Index("ix_finetune_jobs_status", "status"),
)

events = Table(
    "finetune_job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(40), ForeignKey("finetune_jobs.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("level", String(8), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSON, nullable=True),
    Index("ix_finetune_job_events_job_id", "job_id", "id"),
)

checkpoints = Table(
    "finetune_checkpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("job_id", String(40), ForeignKey("finetune_jobs.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("step", Integer, nullable=False),
    Column("path", String(512), nullable=False),  # relative to LLMOPS_HOME
    Column("metrics", JSON, nullable=False),
    Index("ix_finetune_checkpoints_job_id", "job_id", "step"),
)
