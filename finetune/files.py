"""Files kept for the OpenAI files API (uploads for fine-tuning and batches, batch outputs),
with each key's usage: how many files and bytes it stores, counted beside the files.

An upload within a quota is one conditional update of the key's usage and the file's insert,
in one transaction: parallel uploads queue on the usage row (PostgreSQL locks it; SQLite
takes its write lock), so together they cannot pass the quota."""

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, Engine, Row, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.database import as_utc, open_database, reading
from finetune.tables import CHAIN, file_usage, files

Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class StoredFile:
    id: str
    created_at: datetime
    filename: str
    purpose: str
    bytes: int
    rows: int
    path: str  # relative to LLMOPS_HOME
    sha256: str
    owner: str | None = None  # the API key that uploaded it


@dataclass(frozen=True)
class FileUsage:
    files: int
    bytes: int


def _file(row: Row) -> StoredFile:
    values = dict(row._mapping)
    values["created_at"] = as_utc(values["created_at"])
    return StoredFile(**values)


def _usage_key(owner: str | None) -> str:
    return owner or ""  # files made without keys are counted together


class FileStore:
    """Files and each key's usage on SQLAlchemy (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> "FileStore":
        return cls(open_database(url, CHAIN))

    def add(
        self, file: StoredFile, *, max_files: int | None = None, max_bytes: int | None = None
    ) -> bool:
        """Keep `file` and count it in its owner's usage. With limits, only if the owner
        would then store at most `max_files` files and `max_bytes` bytes; False otherwise
        (nothing is kept)."""
        with self.engine.begin() as conn:
            self._ensure_usage(conn, file.owner)
            where = [file_usage.c.owner == _usage_key(file.owner)]
            if max_files is not None:
                where.append(file_usage.c.files + 1 <= max_files)
            if max_bytes is not None:
                where.append(file_usage.c.bytes + file.bytes <= max_bytes)
            counted = conn.execute(
                update(file_usage)
                .where(*where)
                .values(files=file_usage.c.files + 1, bytes=file_usage.c.bytes + file.bytes)
            )
            if counted.rowcount != 1:
                return False
            conn.execute(insert(files).values(**file.__dict__))
        return True

    def _ensure_usage(self, conn: Connection, owner: str | None) -> None:
        dialect = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
        conn.execute(
            dialect(file_usage)
            .values(owner=_usage_key(owner), files=0, bytes=0)
            .on_conflict_do_nothing(index_elements=["owner"])
        )

    def usage(self, owner: str | None) -> FileUsage:
        """What `owner` (None: files made without keys) stores now."""
        query = select(file_usage.c.files, file_usage.c.bytes).where(
            file_usage.c.owner == _usage_key(owner)
        )
        with reading(self.engine) as conn:
            row = conn.execute(query).first()
        return FileUsage(row.files, row.bytes) if row else FileUsage(0, 0)

    def get(self, file_id: str) -> StoredFile | None:
        with reading(self.engine) as conn:
            row = conn.execute(select(files).where(files.c.id == file_id)).first()
        return _file(row) if row else None

    def list(
        self,
        owner: str | None = None,
        *,
        purpose: str | None = None,
        after: StoredFile | None = None,
        limit: int | None = None,
        order: Order = "desc",
    ) -> list[StoredFile]:
        """By creation time (newest first for `desc`), of one owner and purpose if given,
        starting after the file `after`."""
        created, key = files.c.created_at, files.c.id
        query = select(files)
        if order == "desc":
            query = query.order_by(created.desc(), key.desc())
        else:
            query = query.order_by(created.asc(), key.asc())
        if owner is not None:
            query = query.where(files.c.owner == owner)
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        if after is not None:
            at = after.created_at
            if order == "desc":
                query = query.where((created < at) | ((created == at) & (key < after.id)))
            else:
                query = query.where((created > at) | ((created == at) & (key > after.id)))
        if limit is not None:
            query = query.limit(limit)
        with reading(self.engine) as conn:
            return [_file(row) for row in conn.execute(query)]

    def delete(self, file_id: str) -> bool:
        """Forget the file and take it off its owner's usage; False if there was none."""
        with self.engine.begin() as conn:
            row = conn.execute(
                files.delete().where(files.c.id == file_id).returning(files.c.owner, files.c.bytes)
            ).first()
            if row is None:
                return False
            conn.execute(
                update(file_usage)
                .where(file_usage.c.owner == _usage_key(row.owner))
                .values(files=file_usage.c.files - 1, bytes=file_usage.c.bytes - row.bytes)
            )
        return True
