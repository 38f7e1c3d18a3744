"""Schema migrations: each package keeps one alembic chain with its own version table, in
the one database the stack shares. Packages declare their chain as an entry point in the
`llmops.migrations` group, so `upgrade_all` finds every installed chain without importing
the packages that own them."""

import zlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from core.errors import ErrorCode, StackError

ENTRY_POINT_GROUP = "llmops.migrations"


class SchemaError(StackError):
    """The database's schema cannot be used by this release of the code."""


@dataclass(frozen=True)
class MigrationChain:
    name: str  # the package, also the prefix of its tables
    script_location: Path
    version_table: str
    legacy_version_table: str | None = None  # where an earlier release kept the revision

    def config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(self.script_location))
        config.attributes["version_table"] = self.version_table
        return config

    def revisions(self) -> set[str]:
        return {r.revision for r in ScriptDirectory.from_config(self.config()).walk_revisions()}

    def head(self) -> str | None:
        return ScriptDirectory.from_config(self.config()).get_current_head()

    def legacy_revision(self, conn: Connection) -> str | None:
        """This chain's revision in the version table an earlier release shared with other
        libraries (alembic's default `alembic_version`), while it has no table of its own."""
        legacy = self.legacy_version_table
        tables = inspect(conn)
        if legacy is None or not tables.has_table(legacy) or tables.has_table(self.version_table):
            return None
        found = conn.execute(text(f"SELECT version_num FROM {legacy}")).scalars()
        return next((r for r in found if r in self.revisions()), None)

    def current(self, conn: Connection) -> str | None:
        opts = {"version_table": self.version_table}
        found = MigrationContext.configure(conn, opts=opts).get_current_revision()
        return found or self.legacy_revision(conn)


def _adopt_legacy_version(conn: Connection, chain: MigrationChain) -> None:
    """Move the chain's revision from the shared legacy version table into its own."""
    revision = chain.legacy_revision(conn)
    if revision is None:
        return
    own = MigrationContext.configure(conn, opts={"version_table": chain.version_table})
    own.stamp(ScriptDirectory.from_config(chain.config()), revision)
    legacy = chain.legacy_version_table
    conn.execute(text(f"DELETE FROM {legacy} WHERE version_num = :r"), {"r": revision})
    if conn.execute(text(f"SELECT COUNT(*) FROM {legacy}")).scalar() == 0:
        conn.execute(text(f"DROP TABLE {legacy}"))


def migrate(engine: Engine, chain: MigrationChain) -> None:
    """Bring `chain`'s tables to its newest revision. SchemaError if the database was
    migrated by a newer release than this one."""
    config = chain.config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes opening a fresh database at once must not both create the tables.
            lock = zlib.crc32(chain.version_table.encode())
            conn.execute(text(f"SELECT pg_advisory_xact_lock({lock})"))
        _adopt_legacy_version(conn, chain)
        current = chain.current(conn)
        if current is not None and current not in chain.revisions():
            raise SchemaError(
                ErrorCode.UNAVAILABLE,
                f"the database's {chain.name} tables are at revision {current!r}, which this "
                "release does not know: a newer release of llmops-stack migrated them. Upgrade "
                "llmops-stack, or point LLMOPS_DATABASE_URL at another database",
            )
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def run_migrations(metadata: MetaData) -> None:
    """The body of a package's alembic `env.py`: migrate the connection `migrate` hands in."""
    context.configure(
        connection=context.config.attributes["connection"],
        target_metadata=metadata,
        version_table=context.config.attributes["version_table"],
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def installed_chains() -> list[MigrationChain]:
    """Every package's chain, as the installed distributions declare them."""
    return sorted((ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)), key=lambda c: c.name)


@dataclass(frozen=True)
class ChainStatus:
    name: str
    current: str | None
    head: str | None


def status(engine: Engine) -> list[ChainStatus]:
    """Where each installed chain stands in the database."""
    with engine.connect() as conn:
        return [ChainStatus(c.name, c.current(conn), c.head()) for c in installed_chains()]


def upgrade_all(engine: Engine) -> list[ChainStatus]:
    """Migrate every installed chain to its newest revision; where each stood before."""
    before = status(engine)
    for chain in installed_chains():
        migrate(engine, chain)
    return before
