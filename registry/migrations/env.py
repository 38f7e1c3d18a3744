"""Alembic environment: migrations run on the connection `registry.sql_store` hands in."""

from alembic import context
from sqlalchemy import text

from registry.tables import metadata

connection = context.config.attributes["connection"]
if connection.dialect.name == "postgresql":
    # Two processes opening a fresh database at once must not both create the tables.
    connection.execute(text("SELECT pg_advisory_xact_lock(7242050)"))
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
