"""The gateway's tables (API keys, the traffic log, stored responses, edge devices, console
sessions), prefixed `serving_`, in the stack's database, with their own migration chain in
`serving/migrations`."""

from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
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
    "serving", Path(__file__).parent / "migrations", version_table="serving_alembic_version"
)

metadata = MetaData()

api_keys = Table(
    "serving_api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("models", JSON, nullable=False),  # allowed model names; ["*"] allows all
    Column("admin", Boolean, nullable=False),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("log_traffic", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("teach", Boolean, nullable=False),  # its corrections may train models
    Column("device", Boolean, nullable=False),  # an edge device's: only the edge routes
    # [[maker's actor, ISO time], ...]: who made it, and who made the keys that made it, its
    # own maker last; null for keys made before makers were recorded
    Column("made_by", JSON, nullable=True),
)

traffic = Table(
    "serving_traffic",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("endpoint", String(32), nullable=False),
    Column("model", String(256), nullable=False),
    Column("version", String(160), nullable=False),
    Column("backend", String(32), nullable=False),
    Column("prompt", Text, nullable=False),  # as the model saw it (chat template applied)
    Column("messages", JSON, nullable=True),  # a chat request's messages, as the client sent
    Column("output", Text, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("finish_reason", String(16), nullable=True),
    Column("end_user", String(256), nullable=True),  # the request's `user`
    Index("ix_serving_traffic_created_at", "created_at"),
    Index("ix_serving_traffic_version_created_at", "version", "created_at"),
    Index("ix_serving_traffic_request_id", "request_id"),
)

batches = Table(
    "serving_batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(32), nullable=True),  # the API key that made it
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(8), nullable=False),
    Column("model", String(256), nullable=True),  # the first line's
    Column("metadata", JSON, nullable=True),
    Column("status", String(16), nullable=False),
    Column("total", Integer, nullable=False),
    Column("completed", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("output_file_id", String(64), nullable=True),
    Column("error_file_id", String(64), nullable=True),
    Column("errors", JSON, nullable=True),  # why a batch failed as a whole
    *lease_columns(),  # the gateway process running it (core.leases)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("in_progress_at", DateTime(timezone=True), nullable=True),
    Column("finalizing_at", DateTime(timezone=True), nullable=True),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("failed_at", DateTime(timezone=True), nullable=True),
    Column("expired_at", DateTime(timezone=True), nullable=True),
    Column("cancelling_at", DateTime(timezone=True), nullable=True),
    Column("cancelled_at", DateTime(timezone=True), nullable=True),
    Index("ix_serving_batches_owner_created_at", "owner", "created_at"),
    Index("ix_serving_batches_status", "status"),
)

batch_lines = Table(
    "serving_batch_lines",
    metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("line", Integer, primary_key=True),  # 1-based, as in the input file
    Column("custom_id", String(512), nullable=False),
    Column("body", JSON, nullable=False),  # the request, validated when the batch was made
    Column("status", String(16), nullable=False),  # pending, completed or failed
    Column("result", JSON, nullable=True),  # the output or error file's line
)

responses = Table(
    "serving_responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String(32), nullable=True),  # the key that made it; only it may read it
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("response", JSON, nullable=False),  # the Responses API object
    Column("conversation", JSON, nullable=False),  # every message up to its output, as chat
)

edge_devices = Table(
    "serving_edge_devices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String(32), nullable=False, unique=True),  # its API key, made with it
    Column("model", String(256), nullable=False),  # the reference it follows
    Column("version", String(160), nullable=True),  # as it last reported
    Column("bundle_digest", String(80), nullable=True),
    Column("status", String(16), nullable=True),
    Column("detail", String(500), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=True),
    Column("removed_at", DateTime(timezone=True), nullable=True),
)

console_sessions = Table(
    "serving_console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 of the cookie's token
    Column("key_id", String(32), nullable=False),  # the key that logged in
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_serving_console_sessions_expires", "expires_at"),
)
