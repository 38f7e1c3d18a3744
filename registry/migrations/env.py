"""Alembic environment of the registry tables; `registry.sql_store.migrate` runs it."""

from registry.sql_store import run_migrations
from registry.tables import metadata

run_migrations(metadata)
