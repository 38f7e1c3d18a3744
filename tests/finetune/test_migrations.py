from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from finetune.jobs import JobStore
from finetune.tables import metadata


def test_migrations_build_the_declared_schema(database_url: str) -> None:
    store = JobStore.open(database_url)
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": "finetune_alembic_version"}
        )
        assert context.get_current_revision() == "f0001"
        assert compare_metadata(context, metadata) == []


def test_opening_twice_is_idempotent(database_url: str) -> None:
    JobStore.open(database_url)
    JobStore.open(database_url)
