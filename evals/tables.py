"""The evaluation tables (runs, feedback), prefixed `evals_`, in the stack's database, with
their own migration chain in `evals/migrations`. A run's per-example outputs are an artifact
file, named here by path and digest."""

from pathlib import Path

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from core.migrations import MigrationChain

CHAIN = MigrationChain(
    "evals", Path(__file__).parent / "migrations", version_table="evals_alembic_version"
)

metadata = MetaData()

runs = Table(
    "evals_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("suite", String(64), nullable=False),
    Column("suite_digest", String(71), nullable=False),
    Column("model", String(256), nullable=False),  # as asked: demo@staging, a URL's model
    Column("version", String(160), nullable=True),  # the registry version scored, when known
    Column("target", String(512), nullable=False),  # in process, or the server's URL
    Column("status", String(16), nullable=False),  # running, succeeded, failed
    Column("metrics", JSON, nullable=False),  # "task/metric" -> {value, low, high}
    Column("examples_path", String(512), nullable=True),  # relative to LLMOPS_HOME
    Column("examples_digest", String(71), nullable=True),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("seconds", Float, nullable=True),
    Column("error", Text, nullable=True),
    Index("evals_runs_by_version", "suite_digest", "version", "status"),
)

feedback = Table(
    "evals_feedback",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("request_id", String(64), nullable=False),  # the traffic log's request id
    Column("owner", String(32), nullable=True),  # the API key that made the request
    Column("version", String(160), nullable=False),  # the version that answered
    Column("rating", Integer, nullable=True),  # 1 (bad) to 5 (good)
    Column("correction", Text, nullable=True),  # the answer it should have given
    Index("evals_feedback_by_request", "request_id"),
    Index("evals_feedback_by_owner", "owner", "created_at"),
)
