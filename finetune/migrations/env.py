"""Alembic environment of the fine-tuning tables; `registry.sql_store.migrate` runs it."""

from finetune.tables import metadata
from registry.sql_store import run_migrations

run_migrations(metadata)
