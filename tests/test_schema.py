"""Every package's migration chain builds the schema its tables declare, on SQLite and
PostgreSQL, and is found through the package's entry point."""

import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from core.database import dispose_engines, engine_for, open_database
from core.migrations import installed_chains, status
from core.settings import StackSettings
from evals import tables as evals_tables
from finetune import tables as finetune_tables
from registry import tables as registry_tables
from registry.service import open_registry
from serving import tables as serving_tables
from serving.keys import KeyStore
from tests.registry.conftest import make_model_dir

CHAINS = {
    "registry": (registry_tables.CHAIN, registry_tables.metadata),
    "finetune": (finetune_tables.CHAIN, finetune_tables.metadata),
    "serving": (serving_tables.CHAIN, serving_tables.metadata),
    "evals": (evals_tables.CHAIN, evals_tables.metadata),
}


def test_every_chain_is_installed_with_its_own_version_table() -> None:
    assert {c.name: c for c in installed_chains()} == {n: c for n, (c, _) in CHAINS.items()}
    assert len({c.version_table for c, _ in CHAINS.values()}) == len(CHAINS)
    assert all(c.version_table != "alembic_version" for c, _ in CHAINS.values())


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_migrations_build_the_declared_schema(database_url: str, name: str) -> None:
    chain, metadata = CHAINS[name]
    engine = open_database(database_url, chain)
    with engine.connect() as conn:
        assert chain.current(conn) == chain.head()
        context = MigrationContext.configure(conn, opts={"version_table": chain.version_table})
        assert compare_metadata(context, metadata) == []
    tables = set(inspect(engine).get_table_names())
    assert all(t.startswith(f"{name}_") for t in metadata.tables)
    assert tables == {*metadata.tables, chain.version_table}


def test_opening_again_in_a_new_process_changes_nothing(database_url: str) -> None:
    chain = registry_tables.CHAIN
    open_database(database_url, chain)
    dispose_engines()  # as a new process would, look at the schema afresh
    engine = open_database(database_url, chain)
    assert [(s.name, s.current) for s in status(engine)] == [
        ("evals", None),
        ("finetune", None),
        ("registry", chain.head()),
        ("serving", None),
    ]


def test_another_librarys_alembic_version_table_is_left_alone(database_url: str) -> None:
    """Optuna's RDB storage, for one, keeps its revision in alembic's default table."""
    engine = engine_for(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('v3.0.0.d')")
    for chain, _ in CHAINS.values():
        open_database(database_url, chain)
    with engine.connect() as conn:
        kept = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    assert kept == [("v3.0.0.d",)]
    assert {s.name: s.current for s in status(engine)} == {
        name: chain.head() for name, (chain, _) in CHAINS.items()
    }


def test_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    """SQLite in WAL mode: a long write transaction (a registration, a migration) does not
    hold up the reads that serve requests."""
    stack = StackSettings(home=tmp_path / "home")
    registry = open_registry(stack)
    registry.register("demo", make_model_dir(tmp_path / "m", 1))
    registry.set_alias("demo", "production", 1)
    keys = KeyStore(open_database(stack.resolved_database_url, serving_tables.CHAIN), ttl=0)
    _, secret = keys.create("reader")
    with engine_for(stack.resolved_database_url).begin() as writer:  # holds the write lock
        writer.exec_driver_sql("UPDATE registry_models SET description = 'busy'")
        started = time.monotonic()
        assert registry.resolve("demo").version == 1
        assert [m.name for m in registry.list_models()] == ["demo"]
        assert keys.authenticate(secret) is not None
        assert time.monotonic() - started < 5  # SQLite's busy timeout is 60 s


@pytest.mark.postgres
def test_postgres_connections_time_out(postgres_url: str) -> None:
    """A hung query or an unreachable server fails the operation instead of holding a worker
    or a request forever; a URL may set its own limits."""
    with engine_for(postgres_url).connect() as conn:
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "1min"
    short = engine_for(f"{postgres_url}?options=-c%20statement_timeout%3D100")
    with short.connect() as conn, pytest.raises(OperationalError, match="statement timeout"):
        conn.exec_driver_sql("SELECT pg_sleep(2)")
