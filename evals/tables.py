"""The evaluation tables (runs, feedback, drift checks and their embeddings, the loop's
events), prefixed `evals_`, in the stack's database, with their own migration chain in
`evals/migrations`. A run's per-example outputs are an artifact file, named by path and
digest; while it runs, what it scored so far is in `evals_run_progress`."""

from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from core.leases import lease_columns
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
    Column("status", String(16), nullable=False),  # queued, running, succeeded, failed, canceled
    Column("metrics", JSON, nullable=False),  # "task/metric" -> {value, low, high}
    Column("examples_path", String(512), nullable=True),  # relative to LLMOPS_HOME
    Column("examples_digest", String(71), nullable=True),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("seconds", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("owner", String(32), nullable=True),  # the API key that started it over HTTP
    Column("worker", String(160), nullable=True),  # host:pid:start of the process running it
    Column("name", String(256), nullable=True),  # a name given over HTTP
    Column("metadata", JSON, nullable=True),  # key-value labels given over HTTP
    Column("summary", JSON, nullable=True),  # pass/fail counts and usage, when it finished
    *lease_columns(),  # the worker running a run started over HTTP (core.leases)
    Index("evals_runs_by_version", "suite_digest", "version", "status"),
    Index("evals_runs_by_suite", "suite", "created_at"),
)

# What a run's worker has scored so far, each example's answer or log-likelihood (by its
# place: the target's call number and the example's index in it), so that the next worker
# of an interrupted run goes on from there. Deleted when the run finishes.
run_progress = Table(
    "evals_run_progress",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("slot", String(32), primary_key=True),  # "<call>:<index>"
    Column("output", JSON, nullable=False),
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
    Column("given_by", String(32), nullable=True),  # the API key that gave it
    Column("teach", Boolean, nullable=False),  # whether that key may teach: train models
    Column("review", String(16), nullable=False),  # pending, approved or rejected
    Column("reviewed_by", String(128), nullable=True),
    Column("reviewed_at", DateTime(timezone=True), nullable=True),
    Index("evals_feedback_by_request", "request_id"),
    Index("evals_feedback_by_owner", "owner", "created_at"),
    Index("evals_feedback_by_giver", "given_by", "created_at"),
)

embeddings = Table(
    "evals_embeddings",
    metadata,
    Column("digest", String(64), primary_key=True),  # sha256 of the text
    Column("model", String(64), nullable=False),  # the sentence-embedding model
    Column("vector", LargeBinary, nullable=False),  # float16
)

drift_checks = Table(
    "evals_drift_checks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model", String(256), nullable=False),
    Column("version", String(160), nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("window_n", Integer, nullable=False),
    Column("reference", JSON, nullable=False),  # what the window was compared with
    Column("signals", JSON, nullable=False),  # per signal: effect, p-value, sample sizes
    Column("score", Float, nullable=False),
    Column("drifted", Boolean, nullable=False),
    Column("alarms", JSON, nullable=False),  # the signals that raised it
    Index("evals_drift_checks_by_model", "model", "created_at"),
)

loop_events = Table(
    "evals_loop_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("cycle", String(40), nullable=False),  # one pass drift -> ... -> promotion
    Column("model", String(256), nullable=False),
    Column("policy", String(128), nullable=False),
    Column("step", String(32), nullable=False),
    Column("ref", String(256), nullable=True),  # the check, run, job, version or alias event
    Column("detail", JSON, nullable=False),
    Index("evals_loop_events_by_model", "model", "created_at"),
)
