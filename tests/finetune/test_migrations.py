from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from core.database import dispose_engines, open_database
from finetune.tables import CHAIN, metadata


def test_migrations_build_the_declared_schema(database_url: str) -> None:
    engine = open_database(database_url, CHAIN)
    with engine.connect() as conn:
        assert CHAIN.current(conn) == CHAIN.head() == "f0002"
        context = MigrationContext.configure(conn, opts={"version_table": CHAIN.version_table})
        assert compare_metadata(context, metadata) == []


def test_opening_twice_is_idempotent(database_url: str) -> None:
    open_database(database_url, CHAIN)
    dispose_engines()
    engine = open_database(database_url, CHAIN)
    with engine.connect() as conn:
        assert CHAIN.current(conn) == "f0002"
