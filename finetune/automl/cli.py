"""`llm-finetune tune`: hyperparameter search with Optuna.

llm-finetune tune run SEARCH.yaml [--trials N] [--parallel K] [--here]
llm-finetune tune show STUDY [--out DIR]
"""

import contextlib
import sys
from pathlib import Path

import click

from core.console import print_json, print_table
from finetune.settings import FinetuneSettings


@click.group(help=__doc__)
def tune() -> None:
    pass


@tune.command(name="run")
@click.argument("search_file", metavar="SEARCH", type=click.Path(path_type=Path))
@click.option("--trials", type=click.IntRange(1), help="Trials to finish (default: the file's).")
@click.option(
    "--parallel",
    type=click.IntRange(1),
    help="Trial jobs run at once on this machine (default: LLMOPS_FINETUNE_MAX_RUNNING_JOBS).",
)
@click.option("--here", is_flag=True, help="Run the trials one by one in this process.")
@click.pass_obj
def run_cmd(
    as_json: bool, search_file: Path, trials: int | None, parallel: int | None, here: bool
) -> None:
    """Create or resume the study of SEARCH, run its trials as jobs, register the choice."""
    from finetune.automl.search import load_search
    from finetune.automl.study import run_study
    from finetune.runner import JobRunner
    from registry.service import open_registry

    search = load_search(search_file, trials)
    settings = FinetuneSettings()
    if parallel is not None:
        settings = settings.model_copy(update={"max_running_jobs": parallel})
    runner = JobRunner.open(settings=settings)
    runner.recover()
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the result (--json)
        outcome = run_study(runner, open_registry(runner.stack), search, here=here)
    chosen = outcome.chosen
    summary = {
        "study": search.study,
        "trials": {
            state: sum(1 for t in outcome.study.trials if t.state.name.lower() == state)
            for state in ("complete", "pruned", "fail", "running")
        },
        "chosen_trial": chosen.number if chosen else None,
        "chosen_values": dict(zip(search.metrics, chosen.values, strict=True)) if chosen else None,
        "chosen_params": chosen.params if chosen else None,
        "registered_version": outcome.registered.ref if outcome.registered else None,
    }
    if as_json:
        print_json(summary)
        return
    counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items() if n)
    click.echo(f"study {search.study}: {counts}")
    if chosen is None:
        click.echo("  no complete trial within select.where; nothing registered")
    else:
        values = ", ".join(f"{k}={v:.4g}" for k, v in summary["chosen_values"].items())
        click.echo(f"  chosen: trial {chosen.number} ({values})")
    if outcome.registered:
        click.echo(f"  registered {outcome.registered.ref}")


@tune.command()
@click.argument("study_name", metavar="STUDY")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the PNG plots (default: LLMOPS_HOME/studies/STUDY).",
)
@click.pass_obj
def show(as_json: bool, study_name: str, out: Path | None) -> None:
    """The study's trials as a table, and its plots as PNG files."""
    from core.settings import StackSettings
    from finetune.automl.report import trial_rows, write_plots
    from finetune.automl.storage import load_study
    from finetune.automl.study import REGISTERED_ATTR

    stack = StackSettings()
    study, search = load_study(stack, study_name)
    header, rows = trial_rows(study, search)
    plots = write_plots(study, search, out or stack.resolved_home / "studies" / study_name)
    registered = study.user_attrs.get(REGISTERED_ATTR)
    if as_json:
        print_json(
            {
                "study": study_name,
                "trials": [dict(zip(header, row, strict=True)) for row in rows],
                "registered_version": registered,
                "plots": [str(p) for p in plots],
            }
        )
        return
    print_table(header, rows)
    if registered:
        click.echo(f"registered: {registered}")
    for path in plots:
        click.echo(f"plot: {path}")
