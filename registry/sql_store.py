"""`RegistryStore` on SQLAlchemy: SQLite by default, PostgreSQL by URL.

Writers serialize per model: PostgreSQL locks the model's row (`SELECT ... FOR UPDATE`);
SQLite takes the database write lock when a transaction begins (see `core.database`).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Row, Select, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from core.database import as_utc, reading, utc_now
from core.errors import ErrorCode
from registry.entities import (
    Alias,
    AliasAction,
    AliasEvent,
    Model,
    ModelVersion,
    PendingPromotion,
    PromotionStatus,
    VersionFormat,
    VersionKind,
)
from registry.errors import AliasMovedError, RegistryError
from registry.store import RegistryStore
from registry.tables import (
    alias_events,
    aliases,
    models,
    pending_promotions,
    version_tags,
    versions,
)


def _model(row: Row) -> Model:
    return Model(
        row.name,
        row.description,
        as_utc(row.created_at),
        row.created_by,
        row.latest_version,
        row.owner,
    )


_LATEST = (
    select(func.coalesce(func.max(versions.c.version), 0))
    .where(versions.c.name == models.c.name)
    .scalar_subquery()
    .label("latest_version")
)


def _version(row: Row, tags: dict[str, str]) -> ModelVersion:
    parent = f"{row.parent_name}:{row.parent_version}" if row.parent_name else None
    return ModelVersion(
        name=row.name,
        version=row.version,
        kind=VersionKind(row.kind),
        format=VersionFormat(row.format),
        artifact_digest=row.artifact_digest,
        manifest_path=row.manifest_path,
        parent=parent,
        recipe_digest=row.recipe_digest,
        dataset_digests=tuple(row.dataset_digests),
        metrics=dict(row.metrics),
        tags=tags,
        source=row.source,
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        archived_at=as_utc(row.archived_at),
        owner=row.owner,
    )


def _alias(row: Row) -> Alias:
    return Alias(row.name, row.alias, row.version, as_utc(row.updated_at))


def _pending(row: Row) -> PendingPromotion:
    return PendingPromotion(
        id=row.id,
        name=row.name,
        alias=row.alias,
        version=row.version,
        requested_by=row.requested_by,
        reason=row.reason,
        gate=row.gate,
        status=PromotionStatus(row.status),
        decided_by=row.decided_by,
        decision_reason=row.decision_reason,
        created_at=as_utc(row.created_at),
        decided_at=as_utc(row.decided_at),
        event_id=row.event_id,
    )


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
        break_glass_reason=row.break_glass_reason,
    )


class SqlStore(RegistryStore):
    def __init__(self, engine: Engine):
        self.engine = engine

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
            select(versions).where(versions.c.name == name, versions.c.version == version)
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

    def _versions(self, conn: Connection, stmt: Select) -> list[ModelVersion]:
        """The versions `stmt` selects, each with its tags (read in one more query)."""
        rows = conn.execute(stmt).all()
        tags: dict[int, dict[str, str]] = {row.id: {} for row in rows}
        if rows:
            found = conn.execute(
                select(version_tags).where(version_tags.c.version_id.in_(list(tags)))
            )
            for tag in found:
                tags[tag.version_id][tag.key] = tag.value
        return [_version(row, tags[row.id]) for row in rows]

    def _one_version(self, conn: Connection, name: str, version: int) -> ModelVersion:
        row = self._version_row(conn, name, version)
        return self._versions(conn, select(versions).where(versions.c.id == row.id))[0]

    def get_model(self, name: str) -> Model:
        with reading(self.engine) as conn:
            self._model_row(conn, name)
            return _model(conn.execute(select(models, _LATEST).where(models.c.name == name)).one())

    def list_models(
        self, query: str | None = None, *, limit: int | None = None, after: str | None = None
    ) -> list[Model]:
        stmt = select(models, _LATEST).order_by(models.c.name).limit(limit)
        if query:
            stmt = stmt.where(models.c.name.contains(query, autoescape=True))
        if after is not None:
            stmt = stmt.where(models.c.name > after)
        with reading(self.engine) as conn:
            return [_model(row) for row in conn.execute(stmt)]

    def add_version(
        self,
        name: str,
        *,
        kind: VersionKind,
        format: VersionFormat,
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
        owner: str | None = None,
    ) -> ModelVersion:
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        with self.engine.begin() as conn:
            conn.execute(
                insert(models)
                .values(
                    name=name,
                    description=description,
                    created_at=utc_now(),
                    created_by=actor,
                    owner=owner,
                )
                .on_conflict_do_nothing(index_elements=["name"])
            )
            model = self._model_row(conn, name, lock=True)
            if owner is not None and model.owner != owner:
                raise RegistryError(
                    ErrorCode.PERMISSION_DENIED,
                    f"model {name!r} belongs to someone else; register under another name",
                    param="name",
                )
            existing = conn.execute(
                select(versions.c.version).where(
                    versions.c.name == name, versions.c.artifact_digest == artifact_digest
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
                    select(func.max(versions.c.version)).where(versions.c.name == name)
                ).scalar()
                or 0
            ) + 1
            try:
                version_id = conn.execute(
                    versions.insert()
                    .values(
                        name=name,
                        version=number,
                        kind=kind.value,
                        format=format.value,
                        artifact_digest=artifact_digest,
                        manifest_path=manifest_path,
                        parent_name=parent[0] if parent else None,
                        parent_version=parent[1] if parent else None,
                        recipe_digest=recipe_digest,
                        dataset_digests=list(dataset_digests),
                        metrics=metrics,
                        source=source,
                        created_by=actor,
                        created_at=utc_now(),
                        archived_at=None,
                        owner=model.owner,
                    )
                    .returning(versions.c.id)
                ).scalar_one()
            except IntegrityError:
                raise RegistryError(
                    ErrorCode.CONFLICT,
                    f"another writer registered {name}:{number} at the same time; try again",
                ) from None
            if tags:
                conn.execute(
                    version_tags.insert(),
                    [{"version_id": version_id, "key": k, "value": v} for k, v in tags.items()],
                )
            return self._one_version(conn, name, number)

    def get_version(self, name: str, version: int) -> ModelVersion:
        with reading(self.engine) as conn:
            return self._one_version(conn, name, version)

    def list_versions(
        self,
        name: str | None = None,
        *,
        kind: VersionKind | None = None,
        tags: Mapping[str, str | None] | None = None,
        include_archived: bool = False,
        limit: int | None = None,
        after: tuple[str, int] | None = None,
    ) -> list[ModelVersion]:
        stmt = select(versions).order_by(versions.c.name, versions.c.version).limit(limit)
        if name is not None:
            stmt = stmt.where(versions.c.name == name)
        if kind is not None:
            stmt = stmt.where(versions.c.kind == kind.value)
        for key, value in (tags or {}).items():
            tagged = select(version_tags.c.version_id).where(version_tags.c.key == key)
            if value is not None:
                tagged = tagged.where(version_tags.c.value == value)
            stmt = stmt.where(versions.c.id.in_(tagged))
        if not include_archived:
            stmt = stmt.where(versions.c.archived_at.is_(None))
        if after is not None:
            stmt = stmt.where(
                (versions.c.name > after[0])
                | ((versions.c.name == after[0]) & (versions.c.version > after[1]))
            )
        with reading(self.engine) as conn:
            if name is not None:
                self._model_row(conn, name)
            return self._versions(conn, stmt)

    def archive_version(self, name: str, version: int, actor: str) -> ModelVersion:
        with self.engine.begin() as conn:
            self._model_row(conn, name, lock=True)
            row = self._version_row(conn, name, version)
            if row.archived_at is None:
                pointing = conn.execute(
                    select(aliases.c.alias).where(
                        aliases.c.name == name, aliases.c.version == version
                    )
                ).scalars()
                if held := sorted(pointing):
                    raise RegistryError(
                        ErrorCode.CONFLICT,
                        f"{name}:{version} is still the target of alias(es) {', '.join(held)}; "
                        "move or delete them before archiving it",
                    )
                conn.execute(
                    versions.update().where(versions.c.id == row.id).values(archived_at=utc_now())
                )
            return self._one_version(conn, name, version)

    def get_alias(self, name: str, alias: str) -> Alias | None:
        with reading(self.engine) as conn:
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
        with reading(self.engine) as conn:
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
        break_glass_reason: str | None = None,
    ) -> AliasEvent:
        with self.engine.begin() as conn:
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
            now = utc_now()
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
                    break_glass_reason=break_glass_reason,
                )
                .returning(*alias_events.c)
            )
            return _event(result.one())

    def alias_events(
        self,
        name: str,
        alias: str | None = None,
        *,
        limit: int | None = None,
        after: int | None = None,
    ) -> list[AliasEvent]:
        stmt = (
            select(alias_events)
            .where(alias_events.c.name == name)
            .order_by(alias_events.c.id)
            .limit(limit)
        )
        if alias is not None:
            stmt = stmt.where(alias_events.c.alias == alias)
        if after is not None:
            stmt = stmt.where(alias_events.c.id > after)
        with reading(self.engine) as conn:
            self._model_row(conn, name)
            return [_event(row) for row in conn.execute(stmt)]

    def add_pending(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str,
        reason: str,
        gate: dict[str, Any] | None,
    ) -> PendingPromotion:
        with self.engine.begin() as conn:
            self._version_row(conn, name, version)
            result = conn.execute(
                pending_promotions.insert()
                .values(
                    name=name,
                    alias=alias,
                    version=version,
                    requested_by=actor,
                    reason=reason,
                    gate=gate,
                    status=PromotionStatus.PENDING.value,
                    decided_by=None,
                    decision_reason="",
                    created_at=utc_now(),
                )
                .returning(*pending_promotions.c)
            )
            return _pending(result.one())

    def get_pending(self, promotion_id: int) -> PendingPromotion:
        with reading(self.engine) as conn:
            row = conn.execute(
                select(pending_promotions).where(pending_promotions.c.id == promotion_id)
            ).first()
        if row is None:
            raise RegistryError(
                ErrorCode.NOT_FOUND,
                f"no promotion request {promotion_id}",
                param="promotion_id",
            )
        return _pending(row)

    def list_pending(
        self, name: str | None = None, status: PromotionStatus | None = None
    ) -> list[PendingPromotion]:
        stmt = select(pending_promotions).order_by(pending_promotions.c.id.desc())
        if name is not None:
            stmt = stmt.where(pending_promotions.c.name == name)
        if status is not None:
            stmt = stmt.where(pending_promotions.c.status == status.value)
        with reading(self.engine) as conn:
            return [_pending(row) for row in conn.execute(stmt)]

    def decide_pending(
        self,
        promotion_id: int,
        status: PromotionStatus,
        *,
        actor: str,
        reason: str,
        event_id: int | None = None,
    ) -> PendingPromotion:
        with self.engine.begin() as conn:
            done = conn.execute(
                pending_promotions.update()
                .where(
                    pending_promotions.c.id == promotion_id,
                    pending_promotions.c.status == PromotionStatus.PENDING.value,
                )
                .values(
                    status=status.value,
                    decided_by=actor,
                    decision_reason=reason,
                    decided_at=utc_now(),
                    event_id=event_id,
                )
            )
        if done.rowcount != 1:
            found = self.get_pending(promotion_id)
            raise RegistryError(
                ErrorCode.CONFLICT,
                f"promotion request {promotion_id} was {found.status.value} already by "
                f"{found.decided_by}",
                param="promotion_id",
            )
        return self.get_pending(promotion_id)
