"""The registry's tables (prefixed `registry_`) and their migration chain. Migrations in
`registry/migrations` create them; keep both in step."""

from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from core.migrations import MigrationChain

CHAIN = MigrationChain(
    "registry",
    Path(__file__).parent / "migrations",
    version_table="registry_alembic_version",
    legacy_version_table="alembic_version",
)

metadata = MetaData()

models = Table(
    "registry_models",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("description", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("owner", String(32), nullable=True),  # API key id; None: an operator's, public
)

versions = Table(
    "registry_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), ForeignKey("registry_models.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("format", String(32), nullable=False),
    Column("artifact_digest", String(80), nullable=False),
    Column("manifest_path", String(512), nullable=False),
    Column("parent_name", String(128), nullable=True),
    Column("parent_version", Integer, nullable=True),
    Column("recipe_digest", String(80), nullable=True),
    Column("dataset_digests", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("source", Text, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("archived_at", DateTime(timezone=True), nullable=True),
    Column("owner", String(32), nullable=True),  # the model's owner when it was registered
    UniqueConstraint("name", "version", name="uq_registry_versions_name_version"),
    UniqueConstraint("name", "artifact_digest", name="uq_registry_versions_name_digest"),
    ForeignKeyConstraint(
        ["parent_name", "parent_version"],
        ["registry_versions.name", "registry_versions.version"],
        name="fk_registry_versions_parent",
    ),
)

version_tags = Table(
    "registry_version_tags",
    metadata,
    Column(
        "version_id",
        Integer,
        ForeignKey("registry_versions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("key", String(128), primary_key=True),
    Column("value", String(512), nullable=False),
    Index("ix_registry_version_tags_key_value", "key", "value"),
)

aliases = Table(
    "registry_aliases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(
        ["name", "version"],
        ["registry_versions.name", "registry_versions.version"],
        name="fk_registry_aliases_version",
    ),
)

alias_events = Table(
    "registry_alias_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), ForeignKey("registry_models.name"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=True),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("forced", Boolean, nullable=False),
    Column("gate", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("break_glass_reason", Text, nullable=True),
    Index("ix_registry_alias_events_name_alias", "name", "alias", "id"),
)

pending_promotions = Table(
    "registry_pending_promotions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), ForeignKey("registry_models.name"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("requested_by", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("gate", JSON, nullable=True),
    Column("status", String(16), nullable=False),
    Column("decided_by", String(256), nullable=True),
    Column("decision_reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Column("event_id", Integer, ForeignKey("registry_alias_events.id"), nullable=True),
    Index("ix_registry_pending_promotions_name_status", "name", "status", "id"),
)
