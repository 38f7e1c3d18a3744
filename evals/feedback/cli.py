"""`llm-evals feedback list|approve|reject`: an admin's review of the corrections keys with
the teach scope gave, before loops with `review: true` train on them."""

from dataclasses import asdict

import click

from core.console import print_json, print_table
from core.database import open_database
from core.settings import StackSettings
from evals.drift.traffic import open_traffic_source
from evals.feedback.review import APPROVED, PENDING, REJECTED, STATES, FeedbackReview, Reviewable
from evals.tables import CHAIN


def _review() -> FeedbackReview:
    return FeedbackReview(open_database(StackSettings().resolved_database_url, CHAIN))


@click.group()
def feedback() -> None:
    """Review corrections before they train models."""


@feedback.command("list")
@click.option("--state", type=click.Choice(STATES), default=PENDING, show_default=True)
@click.option("--key", help="Only corrections this API key gave.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.pass_obj
def list_corrections(as_json: bool, state: str, key: str | None, limit: int) -> None:
    """Corrections from keys allowed to teach, oldest first, with the prompt they answer."""
    found = _review().list_corrections(state, key=key, limit=limit)
    traffic = open_traffic_source(StackSettings())

    def messages(c: Reviewable) -> list[dict[str, str]]:
        records = [r for r in traffic.find(c.request_id) if r.version == c.version]
        return (records[-1].messages or []) if records else []

    if as_json:
        print_json([{**asdict(c), "messages": messages(c)} for c in found])
        return
    print_table(
        ("id", "given", "key", "version", "prompt", "correction"),
        [
            (c.id, f"{c.created_at:%Y-%m-%d %H:%M}", c.given_by or "-", c.version,
             _short(next((m["content"] for m in messages(c)[::-1] if m["role"] == "user"), "-")),
             _short(c.correction))
            for c in found
        ],
    )  # fmt: skip


def _short(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _decide(state: str, as_json: bool, ids: tuple[str, ...], key: str | None) -> None:
    changed = _review().decide(state, StackSettings().actor, ids=ids, key=key)
    if as_json:
        print_json({"review": state, "changed": changed})
    else:
        click.echo(f"{state} {changed} correction{'s' * (changed != 1)}")


@feedback.command("approve")
@click.argument("ids", nargs=-1)
@click.option("--key", help="Approve every pending correction this API key gave.")
@click.pass_obj
def approve(as_json: bool, ids: tuple[str, ...], key: str | None) -> None:
    """Let corrections (by id) train models in loops that ask for review."""
    _decide(APPROVED, as_json, ids, key)


@feedback.command("reject")
@click.argument("ids", nargs=-1)
@click.option("--key", help="Reject every correction this API key gave, even approved ones.")
@click.pass_obj
def reject(as_json: bool, ids: tuple[str, ...], key: str | None) -> None:
    """Keep corrections (by id) out of training, with review or without."""
    _decide(REJECTED, as_json, ids, key)
