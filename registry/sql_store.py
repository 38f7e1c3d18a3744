"""`RegistryStore` on SQLAlchemy: SQLite by default, PostgreSQL by URL.

Writers serialize per model: PostgreSQL locks the model's row (`SELECT ... FOR UPDATE`);
SQLite takes the database write lock when a transaction begins (`BEGIN IMMEDIATE`).
"""

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, Engine, MetaData, Row, create_engine, event, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from registry.entities import Alias, AliasAction, AliasEvent, Model, ModelVersion, VersionKind
from registry.errors import AliasMovedError, ErrorCode, RegistryError
from registry.store import RegistryStore
from registry.tables import alias_events, aliases, model_versions, models

_MIGRATIONS = Path(__file__).parent / "migrations"
_SQLITE_BUSY_TIMEOUT_S = 60


def as_utc(value: datetime | None) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite hands back naive ones)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _model(row: Row) -> Model:
    return Model(row.name, row.description, as_utc(row.created_at), row.created_by)


def _version(row: Row) -> ModelVersion:
    parent = f"{row.parent_name}:{row.parent_version}" if row.parent_name else None
    return ModelVersion(
        name=row.name,
        version=row.version,
        kind=VersionKind(row.kind),
        format=row.format,
        artifact_digest=row.artifact_digest,
        manifest_path=row.manifest_path,
        parent=parent,
        recipe_digest=row.recipe_digest,
        dataset_digests=tuple(row.dataset_digests),
        metrics=dict(row.metrics),
        tags=dict(row.tags),
        source=row.source,
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        archived_at=as_utc(row.archived_at),
    )


def _alias(row: Row) -> Alias:
    return Alias(row.name, row.alias, row.version, as_utc(row.updated_at))


def _event(row: Row) -> AliasEvent:
    return AliasEvent(
        id=row.id,
        name=row.name,
        alias=row.alias,
        action=AliasAction(row.action),
        from_version=row.from_version,
        to_version=row.to_version,
        actor=row.actor,
        reason=row.reason,
        forced=row.forced,
        gate=row.gate,
        created_at=as_utc(row.created_at),
    )


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite connections take the write lock when a transaction begins."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def migrate(
    engine: Engine, script_location: Path = _MIGRATIONS, version_table: str = "alembic_version"
) -> None:
    """Bring the schema of one package (its own migrations and version table) to the newest."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["version_table"] = version_table
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def run_migrations(metadata: MetaData) -> None:
    """The body of a package's alembic `env.py`: migrate the connection `migrate` hands in."""
    connection = context.config.attributes["connection"]
    version_table = context.config.attributes["version_table"]
    if connection.dialect.name == "postgresql":
        # Two processes opening a fresh database at once must not both create the tables.
        lock = zlib.crc32(version_table.encode())
        connection.execute(text(f"SELECT pg_advisory_xact_lock({lock})"))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=version_table,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


class SqlStore(RegistryStore):
    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(url)
        migrate(self.engine)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _model_row(self, conn: Connection, name: str, *, lock: bool = False) -> Row:
        stmt = select(models).where(models.c.name == name)
        row = conn.execute(stmt.with_for_update() if lock else stmt).first()
        if row is None:
            raise RegistryError(
                ErrorCode.NOT_FOUND,
                f"model {name!r} does not exist; `llm-registry list` shows the registered models",
                param="model",
            )
        return row

    def _version_row(self, conn: Connection, name: str, version: int) -> Row:
        row = conn.execute(
            select(model_versions).where(
                model_versions.c.name == name, model_versions.c.version == version
            )
        ).first()
        if row is None:
            self._model_row(conn, name)
            raise RegistryError(
                ErrorCode.NOT_FOUND,
                f"model {name!r} has no version {version}; `llm-registry list {name}` shows its "
                "versions",
                param="model",
            )
        return row

    def get_model(self, name: str) -> Model:
        with self._tx() as conn:
            return _model(self._model_row(conn, name))

    def list_models(self, query: str | None = None) -> list[Model]:
        stmt = select(models).order_by(models.c.name)
        if query:
            stmt = stmt.where(models.c.name.contains(query, autoescape=True))
        with self._tx() as conn:
            return [_model(row) for row in conn.execute(stmt)]

    def add_version(
        self,
        name: str,
        *,
        kind: VersionKind,
        format: str,
        artifact_digest: str,
        manifest_path: str,
        parent: tuple[str, int] | None,
        recipe_digest: str | None,
        dataset_digests: Sequence[str],
        metrics: dict[str, float],
        tags: dict[str, str],
        source: str,
        description: str,
        actor: str,
    ) -> ModelVersion:
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        with self._tx() as conn:
            conn.execute(
                insert(models)
                .values(name=name, description=description, created_at=_now(), created_by=actor)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            self._model_row(conn, name, lock=True)
            existing = conn.execute(
                select(model_versions.c.version).where(
                    model_versions.c.name == name,
                    model_versions.c.artifact_digest == artifact_digest,
                )
            ).scalar()
            if existing is not None:
                raise RegistryError(
                    ErrorCode.ALREADY_EXISTS,
                    f"{name}:{existing} already holds this artifact ({artifact_digest}); "
                    f"use {name}:{existing}, or register changed files",
                )
            if parent is not None:
                self._version_row(conn, *parent)
            number = (
                conn.execute(
                    select(func.max(model_versions.c.version)).where(model_versions.c.name == name)
                ).scalar()
                or 0
            ) + 1
            values = {
                "name": name,
                "version": number,
                "kind": kind.value,
                "format": format,
                "artifact_digest": artifact_digest,
                "manifest_path": manifest_path,
                "parent_name": parent[0] if parent else None,
                "parent_version": parent[1] if parent else None,
                "recipe_digest": recipe_digest,
                "dataset_digests": list(dataset_digests),
                "metrics": metrics,
                "tags": tags,
                "source": source,
                "created_by": actor,
                "created_at": _now(),
                "archived_at": None,
            }
            try:
                conn.execute(model_versions.insert().values(**values))
            except IntegrityError:
                raise RegistryError(
                    ErrorCode.CONFLICT,
                    f"another writer registered {name}:{number} at the same time; try again",
                ) from None
            return _version(self._version_row(conn, name, number))

    def get_version(self, name: str, version: int) -> ModelVersion:
        with self._tx() as conn:
            return _version(self._version_row(conn, name, version))

    def list_versions(
        self,
        name: str | None = None,
        *,
        kind: VersionKind | None = None,
        include_archived: bool = False,
    ) -> list[ModelVersion]:
        stmt = select(model_versions).order_by(model_versions.c.name, model_versions.c.version)
        if name is not None:
            stmt = stmt.where(model_versions.c.name == name)
        if kind is not None:
            stmt = stmt.where(model_versions.c.kind == kind.value)
        if not include_archived:
            stmt = stmt.where(model_versions.c.archived_at.is_(None))
        with self._tx() as conn:
            if name is not None:
                self._model_row(conn, name)
            return [_version(row) for row in conn.execute(stmt)]

    def archive_version(self, name: str, version: int, actor: str) -> ModelVersion:
        with self._tx() as conn:
            self._model_row(conn, name, lock=True)
            row = self._version_row(conn, name, version)
            if row.archived_at is not None:
                return _version(row)
            pointing = conn.execute(
                select(aliases.c.alias).where(aliases.c.name == name, aliases.c.version == version)
            ).scalars()
            if held := sorted(pointing):
                raise RegistryError(
                    ErrorCode.CONFLICT,
                    f"{name}:{version} is still the target of alias(es) {', '.join(held)}; move "
                    "or delete them before archiving it",
                )
            conn.execute(
                model_versions.update()
                .where(model_versions.c.id == row.id)
                .values(archived_at=_now())
            )
            return _version(self._version_row(conn, name, version))

    def get_alias(self, name: str, alias: str) -> Alias | None:
        with self._tx() as conn:
            row = conn.execute(
                select(aliases).where(aliases.c.name == name, aliases.c.alias == alias)
            ).first()
            if row is None:
                self._model_row(conn, name)
                return None
            return _alias(row)

    def list_aliases(self, name: str | None = None) -> list[Alias]:
        stmt = select(aliases).order_by(aliases.c.name, aliases.c.alias)
        if name is not None:
            stmt = stmt.where(aliases.c.name == name)
        with self._tx() as conn:
            return [_alias(row) for row in conn.execute(stmt)]

    def move_alias(
        self,
        name: str,
        alias: str,
        *,
        to_version: int | None,
        expected_from: int | None,
        action: AliasAction,
        actor: str,
        reason: str,
        forced: bool = False,
        gate: dict[str, Any] | None = None,
    ) -> AliasEvent:
        with self._tx() as conn:
            self._model_row(conn, name, lock=True)
            where = (aliases.c.name == name, aliases.c.alias == alias)
            current = conn.execute(select(aliases.c.version).where(*where)).scalar()
            if current != expected_from:
                raise AliasMovedError(
                    ErrorCode.CONFLICT,
                    f"alias {name}@{alias} moved to {current} while this change was prepared "
                    f"(expected {expected_from}); look again and retry",
                )
            if to_version is not None:
                target = self._version_row(conn, name, to_version)
                if target.archived_at is not None:
                    raise RegistryError(
                        ErrorCode.CONFLICT,
                        f"{name}:{to_version} is archived; aliases cannot point at it",
                    )
            now = _now()
            if to_version is None:
                conn.execute(aliases.delete().where(*where))
            elif current is None:
                conn.execute(
                    aliases.insert().values(
                        name=name, alias=alias, version=to_version, updated_at=now
                    )
                )
            else:
                conn.execute(
                    aliases.update().where(*where).values(version=to_version, updated_at=now)
                )
            result = conn.execute(
                alias_events.insert()
                .values(
                    name=name,
                    alias=alias,
                    action=action.value,
                    from_version=current,
                    to_version=to_version,
                    actor=actor,
                    reason=reason,
                    forced=forced,
                    gate=gate,
                    created_at=now,
                )
                .returning(*alias_events.c)
            )
            return _event(result.one())

    def alias_events(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        stmt = select(alias_events).where(alias_events.c.name == name).order_by(alias_events.c.id)
        if alias is not None:
            stmt = stmt.where(alias_events.c.alias == alias)
        with self._tx() as conn:
            self._model_row(conn, name)
            return [_event(row) for row in conn.execute(stmt)]
