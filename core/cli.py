"""`llmops`: the stack as a whole. `llmops db status` shows where each installed package's
schema stands in the stack's database; `llmops db upgrade` migrates them all."""

import sys

import click

from core.console import print_json, print_table, run
from core.database import engine_for
from core.migrations import status, upgrade_all
from core.settings import StackSettings

PROG = "llmops"


@click.group(help=__doc__)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def cli(ctx: click.Context, as_json: bool) -> None:
    ctx.obj = as_json


@cli.group()
def db() -> None:
    """The stack's database: where each package's schema stands, and upgrading it."""


@db.command(name="status")
@click.pass_obj
def db_status(as_json: bool) -> None:
    """Each package's schema revision in the database, and the newest this release has."""
    found = status(engine_for(StackSettings().resolved_database_url))
    if as_json:
        print_json([{"chain": s.name, "current": s.current, "head": s.head} for s in found])
        return
    print_table(
        ("package", "current", "newest", "state"),
        [
            (s.name, s.current or "-", s.head, "up to date" if s.current == s.head else "behind")
            for s in found
        ],
    )


@db.command(name="upgrade")
@click.pass_obj
def db_upgrade(as_json: bool) -> None:
    """Migrate every package's tables to the newest schema (existing data is kept)."""
    engine = engine_for(StackSettings().resolved_database_url)
    before = upgrade_all(engine)
    after = {s.name: s.current for s in status(engine)}
    if as_json:
        print_json([{"chain": s.name, "from": s.current, "to": after[s.name]} for s in before])
        return
    for s in before:
        now = after[s.name]
        moved = f"up to date at {now}" if s.current == now else f"{s.current or 'new'} -> {now}"
        click.echo(f"{s.name}: {moved}")


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(cli, PROG, argv))
