"""The stack's database: one SQLAlchemy engine per process and URL, shared by every store,
with each package's schema brought up to date the first time the package opens it.

SQLite connections take the write lock when a transaction begins (`BEGIN IMMEDIATE`), so
writers serialize instead of failing on lock upgrades; PostgreSQL writers lock rows."""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url

from core.migrations import MigrationChain, migrate

_SQLITE_BUSY_TIMEOUT_S = 60
# PostgreSQL defaults, unless the URL sets them: a server that does not answer, or a query
# that hangs, fails the operation instead of holding a worker or a request forever.
_PG_CONNECT_TIMEOUT_S = 10
_PG_STATEMENT_TIMEOUT_MS = 60_000
_READ_ONLY = "llmops_read_only"
_engines: dict[str, Engine] = {}
_migrated: set[tuple[str, str]] = set()
_lock = threading.Lock()


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite hands back naive ones)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _sqlite_engine(url: str) -> Engine:
    path = url.removeprefix("sqlite:///")
    if path and path != url and path != ":memory:":
        Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Readable by its owner only; SQLite gives its -wal and -shm files the same mode.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
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
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _connect_args(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return {}
    args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
    if "options" not in parsed.query:
        args["options"] = f"-c statement_timeout={_PG_STATEMENT_TIMEOUT_MS}"
    return args


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads. On SQLite it takes no write lock: in WAL mode readers run
    beside the one writer instead of queueing behind it."""
    with engine.connect() as conn:
        conn.execution_options(**{_READ_ONLY: True})
        yield conn


def engine_for(url: str) -> Engine:
    """This process's engine for `url`, created on first use."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = _sqlite_engine(url)
            else:
                engine = create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url))
            _engines[url] = engine
        return engine


def open_database(url: str, chain: MigrationChain) -> Engine:
    """The engine for `url`, with `chain`'s tables migrated to the newest revision (once per
    process)."""
    engine = engine_for(url)
    with _lock:
        if (url, chain.name) not in _migrated:
            migrate(engine, chain)
            _migrated.add((url, chain.name))
    return engine


def dispose_engines() -> None:
    """Close every engine's connections (tests that make many databases call this)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()
