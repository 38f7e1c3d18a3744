"""SQLAlchemy table definitions of the registry database. Migrations in
`registry/migrations` create them; keep both in step."""

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

metadata = MetaData()

models = Table(
    "models",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("description", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(256), nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), ForeignKey("models.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("format", String(64), nullable=False),
    Column("artifact_digest", String(80), nullable=False),
    Column("manifest_path", String(512), nullable=False),
    Column("parent_name", String(128), nullable=True),
    Column("parent_version", Integer, nullable=True),
    Column("recipe_digest", String(80), nullable=True),
    Column("dataset_digests", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("source", Text, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("archived_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
    UniqueConstraint("name", "artifact_digest", name="uq_model_versions_name_digest"),
    ForeignKeyConstraint(
        ["parent_name", "parent_version"],
        ["model_versions.name", "model_versions.version"],
        name="fk_model_versions_parent",
    ),
)

aliases = Table(
    "aliases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(
        ["name", "version"],
        ["model_versions.name", "model_versions.version"],
        name="fk_aliases_version",
    ),
)

alias_events = Table(
    "alias_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), ForeignKey("models.name"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=True),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("forced", Boolean, nullable=False),
    Column("gate", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_alias_events_name_alias", "name", "alias", "id"),
)
