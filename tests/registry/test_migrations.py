from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from registry.sql_store import SqlStore
from registry.tables import metadata


def test_migrations_build_the_declared_schema(database_url: str) -> None:
    store = SqlStore(database_url)
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn)
        assert context.get_current_revision() == "0001"
        assert compare_metadata(context, metadata) == []


def test_opening_twice_is_idempotent(database_url: str) -> None:
    SqlStore(database_url)
    SqlStore(database_url)
