"""The gateway's database: the registry's database, with the gateway's own tables."""

from pathlib import Path

from sqlalchemy import Engine

from registry.sql_store import make_engine, migrate

_MIGRATIONS = Path(__file__).parent / "migrations"


def open_database(url: str) -> Engine:
    engine = make_engine(url)
    migrate(engine, _MIGRATIONS, version_table="serving_alembic_version")
    return engine
