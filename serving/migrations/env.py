"""Alembic environment of the serving tables; `core.migrations.migrate` runs it."""

from core.migrations import run_migrations
from serving.tables import metadata

run_migrations(metadata)
