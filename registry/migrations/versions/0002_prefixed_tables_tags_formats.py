"""Table names prefixed `registry_`, tags as indexed rows, version kind apart from format, and
the API key that owns a model and its versions (None: made by an operator, visible to all).

Existing rows are copied into the new tables and the old ones dropped, so a database made by
release 0.1.0 upgrades in place with nothing lost. Kinds and formats of old rows:
- kind `onnx` said only what the files were: its format becomes `onnx`, and its kind `base`
  (no parent) or `merged` (derived from a parent, as a standalone model);
- a format outside hf-safetensors, peft-lora, onnx and gguf becomes `peft-lora` for
  adapters and `hf-safetensors` otherwise (release 0.1.0 only ever wrote those two).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_FORMATS = {"hf-safetensors", "peft-lora", "onnx", "gguf"}


def _old(name: str, *columns: sa.ColumnClause) -> sa.TableClause:
    return sa.table(name, *columns)


def _kind_and_format(row: sa.RowMapping) -> tuple[str, str]:
    kind, fmt = row["kind"], row["format"]
    if kind == "onnx":
        return ("merged" if row["parent_name"] else "base"), "onnx"
    if fmt not in _FORMATS:
        fmt = "peft-lora" if kind == "adapter" else "hf-safetensors"
    return kind, fmt


def upgrade() -> None:
    conn = op.get_bind()
    models = op.create_table(
        "registry_models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("owner", sa.String(32), nullable=True),
    )
    versions = op.create_table(
        "registry_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), sa.ForeignKey("registry_models.name"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("artifact_digest", sa.String(80), nullable=False),
        sa.Column("manifest_path", sa.String(512), nullable=False),
        sa.Column("parent_name", sa.String(128), nullable=True),
        sa.Column("parent_version", sa.Integer, nullable=True),
        sa.Column("recipe_digest", sa.String(80), nullable=True),
        sa.Column("dataset_digests", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner", sa.String(32), nullable=True),
        sa.UniqueConstraint("name", "version", name="uq_registry_versions_name_version"),
        sa.UniqueConstraint("name", "artifact_digest", name="uq_registry_versions_name_digest"),
        sa.ForeignKeyConstraint(
            ["parent_name", "parent_version"],
            ["registry_versions.name", "registry_versions.version"],
            name="fk_registry_versions_parent",
        ),
    )
    tags = op.create_table(
        "registry_version_tags",
        sa.Column(
            "version_id",
            sa.Integer,
            sa.ForeignKey("registry_versions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.String(512), nullable=False),
    )
    op.create_index("ix_registry_version_tags_key_value", "registry_version_tags", ["key", "value"])
    aliases = op.create_table(
        "registry_aliases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["name", "version"],
            ["registry_versions.name", "registry_versions.version"],
            name="fk_registry_aliases_version",
        ),
    )
    events = op.create_table(
        "registry_alias_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), sa.ForeignKey("registry_models.name"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_version", sa.Integer, nullable=True),
        sa.Column("to_version", sa.Integer, nullable=True),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("gate", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_registry_alias_events_name_alias", "registry_alias_events", ["name", "alias", "id"]
    )

    stamp = sa.DateTime(timezone=True)
    old_models = _old(
        "models",
        sa.column("name"),
        sa.column("description"),
        sa.column("created_at", stamp),
        sa.column("created_by"),
    )
    rows = [{**r, "owner": None} for r in conn.execute(sa.select(old_models)).mappings()]
    if rows:
        op.bulk_insert(models, rows)

    version_columns = [c.name for c in versions.columns]
    old_versions = _old(
        "model_versions",
        *(
            sa.column(name, sa.JSON if name in ("dataset_digests", "metrics") else None)
            for name in version_columns
            if name not in ("created_at", "archived_at", "kind", "format", "owner")
        ),
        sa.column("kind"),
        sa.column("format"),
        sa.column("tags", sa.JSON),
        sa.column("created_at", stamp),
        sa.column("archived_at", stamp),
    )
    new_versions, new_tags = [], []
    for row in conn.execute(sa.select(old_versions).order_by(sa.text("id"))).mappings():
        kind, fmt = _kind_and_format(row)
        copied = {c: row[c] for c in version_columns if c != "owner"}
        new_versions.append({**copied, "kind": kind, "format": fmt, "owner": None})
        new_tags += [
            {"version_id": row["id"], "key": key, "value": str(value)}
            for key, value in (row["tags"] or {}).items()
        ]
    if new_versions:
        op.bulk_insert(versions, new_versions)
    if new_tags:
        op.bulk_insert(tags, new_tags)

    old_aliases = _old(
        "aliases",
        sa.column("name"),
        sa.column("alias"),
        sa.column("version"),
        sa.column("updated_at", stamp),
    )
    rows = [dict(r) for r in conn.execute(sa.select(old_aliases)).mappings()]
    if rows:
        op.bulk_insert(aliases, rows)

    old_events = _old(
        "alias_events",
        *(
            sa.column(
                c.name, sa.JSON if c.name == "gate" else stamp if c.name == "created_at" else None
            )
            for c in events.columns
        ),
    )
    rows = [dict(r) for r in conn.execute(sa.select(old_events).order_by(sa.text("id"))).mappings()]
    if rows:
        op.bulk_insert(events, rows)

    if conn.dialect.name == "postgresql":
        for table in ("registry_versions", "registry_alias_events"):
            op.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )
    for table in ("alias_events", "aliases", "model_versions", "models"):
        op.drop_table(table)


def downgrade() -> None:
    raise NotImplementedError("registry 0002 cannot be undone; restore the database's backup")
