"""Alembic environment of the fine-tuning tables; `core.migrations.migrate` runs it."""

from core.migrations import run_migrations
from finetune.tables import metadata

run_migrations(metadata)
