"""Alembic environment of the registry tables; `core.migrations.migrate` runs it."""

from core.migrations import run_migrations
from registry.tables import metadata

run_migrations(metadata)
