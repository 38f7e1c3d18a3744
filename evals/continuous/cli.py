"""`llm-evals loop run POLICY` (the continuous-training loop, once or every so often) and
`llm-evals loop history MODEL` (its timeline, as text, JSON or a picture)."""

import time
from dataclasses import asdict
from pathlib import Path

import click

from core.console import print_json, print_table
from core.database import open_database
from core.settings import StackSettings
from evals.continuous.events import LoopEvents
from evals.drift.checks import DriftStore
from evals.tables import CHAIN


@click.group()
def loop() -> None:
    """The continuous-training loop: drift -> evaluate -> retrain -> gate -> promote."""


@loop.command("run")
@click.argument("policy_path", metavar="POLICY", type=click.Path(path_type=Path))
@click.option("--every", type=click.FloatRange(1), help="Step again every this many seconds.")
@click.pass_obj
def run_loop(as_json: bool, policy_path, every) -> None:
    """Check the policy's model for drift and, on drift, go as far as the policy says."""
    from evals.continuous.loop import ContinuousLoop  # the evals, the trainer: torch
    from evals.continuous.policy import load_policy

    driver = ContinuousLoop.open(load_policy(policy_path))
    while True:
        outcome = driver.step()
        print_json(asdict(outcome)) if as_json else click.echo(outcome.summary)
        if every is None:
            return
        time.sleep(every)


@loop.command("history")
@click.argument("model")
@click.option("--png", "png_path", type=click.Path(path_type=Path), help="Draw the timeline.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.pass_obj
def history(as_json: bool, model, png_path, limit) -> None:
    """MODEL's loop timeline, oldest first: each step and what it links to."""
    from evals.continuous.timeline import label, write_png  # matplotlib

    stack = StackSettings()
    engine = open_database(stack.resolved_database_url, CHAIN)
    events = LoopEvents(engine).history(model, limit)
    if as_json:
        print_json([{**asdict(e), "step": e.step.value} for e in events])
    else:
        print_table(
            ("when", "cycle", "step", "ref", "what"),
            [(f"{e.created_at:%Y-%m-%d %H:%M:%S}", e.cycle, e.step.value, e.ref or "-",
              label(e)) for e in events],
        )  # fmt: skip
    if png_path is not None:
        checks = DriftStore(engine).history(model, limit=limit)
        click.echo(f"wrote {write_png(model, events, checks, png_path)}", err=as_json)
