"""Alembic environment of the serving tables; `registry.sql_store.migrate` runs it."""

from registry.sql_store import run_migrations
from serving.tables import metadata

run_migrations(metadata)
