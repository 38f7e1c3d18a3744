"""Alembic environment of the evaluation tables; `core.migrations.migrate` runs it."""

from core.migrations import run_migrations
from evals.tables import metadata

run_migrations(metadata)
