"""`llm-finetune`: run LoRA / QLoRA fine-tuning, distillation (`method: distill`) and pruning
(`method: prune`) jobs from YAML recipes.

\b
    llm-finetune run RECIPE [--KEY VALUE ...]     train in the foreground
    llm-finetune run --resume JOB_ID              continue a stopped job from its checkpoint
    llm-finetune submit RECIPE [--KEY VALUE ...]  queue a job for a background worker
    llm-finetune validate RECIPE                  check a recipe: every wrong key and value
    llm-finetune list | show JOB | cancel JOB | logs JOB [--follow]
    llm-finetune merge ADAPTER_REF                merge an adapter into its base, register it
    llm-finetune federated run|serve|join ...     federated LoRA fine-tuning on Flower
    llm-finetune tune run SEARCH | show STUDY     hyperparameter search (Optuna), trials as jobs
    llm-finetune demo-data DIR [--skill NAME ...] the demo skills' JSONL splits (data only)

Any recipe key can be given as a flag (`--learning_rate 1e-3`, `--max_steps=50`); flags
override the recipe file.
"""

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from core.console import print_json, print_table, run
from core.errors import ErrorCode
from core.progress import progress_bar
from core.tracing import configure
from finetune.automl.cli import tune
from finetune.demo.skills import SKILLS, read_jsonl, write_skill_splits
from finetune.demo.spec import FULL as DEMO_SPEC
from finetune.errors import FinetuneError
from finetune.federated.cli import federated
from finetune.federated.progress import round_lines
from finetune.job_report import job_summary, open_runner, report_job
from finetune.jobs import JobStatus
from finetune.kinds import FEDERATED
from finetune.methods import check_job_recipe, load_job_recipe
from finetune.recipe import Recipe
from finetune.runner import JobRunner
from registry.protocol import VersionObject
from registry.service import open_registry

PROG = "llm-finetune"
_EXTRA_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--key value` and `--key=value` flags as recipe keys, values read as YAML scalars."""
    overrides: dict[str, Any] = {}
    rest = list(args)
    while rest:
        flag = rest.pop(0)
        if not flag.startswith("--") or len(flag) == 2:
            raise click.UsageError(f"unexpected argument {flag!r}; recipe keys are --KEY VALUE")
        key, sep, value = flag[2:].partition("=")
        if not sep:
            if not rest:
                raise click.UsageError(f"{flag} needs a value")
            value = rest.pop(0)
        overrides[key.replace("-", "_")] = yaml.safe_load(value)
    return overrides


def _recipe(path: Path, extra: list[str], runner: JobRunner) -> tuple[str, Recipe]:
    """The job kind and the recipe with flags applied, its data paths made absolute (a worker
    may run elsewhere) and its rows and models checked, so bad input stops here rather than in
    a job."""
    from finetune.data import read_rows, require_file

    kind, recipe = load_job_recipe(path, parse_overrides(extra))
    check_job_recipe(recipe, open_registry(runner.stack))
    datasets = []
    for spec in recipe.datasets:
        data = Path(spec.path).expanduser().resolve()
        if recipe.clean and spec.split == "train":  # the job drops its bad rows
            require_file(data)
        else:
            read_rows(data, spec.type)
        datasets.append(spec.model_copy(update={"path": str(data)}))
    return kind, recipe.model_copy(update={"datasets": datasets})


@click.group(help=__doc__)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def cli(ctx: click.Context, as_json: bool) -> None:
    ctx.obj = as_json


# Built from the model, so that the list cannot drift from what a recipe takes.
RUN_HELP = f"""Train in the foreground, with a progress bar on a terminal; the job is recorded
like any other.

A LoRA / QLoRA recipe's top-level keys are {", ".join(Recipe.model_fields)}; `method:
distill` and `method: prune` select recipes with keys of their own. docs/reference/recipe.md
gives every key's type, default and meaning; `llm-finetune validate RECIPE` checks a file."""


@cli.command(context_settings=_EXTRA_ARGS, help=RUN_HELP)
@click.argument("recipe", required=False, type=click.Path(path_type=Path))
@click.option("--resume", "resume_id", help="Continue this job from its last checkpoint.")
@click.pass_context
def run_cmd(ctx: click.Context, recipe: Path | None, resume_id: str | None) -> None:
    from finetune.worker import run_job

    configure("llm-finetune")
    runner = open_runner()
    if resume_id:
        if recipe or ctx.args:
            raise click.UsageError("--resume takes a job id only; the job keeps its recipe")
        job = runner.get(resume_id)
        resumable = (JobStatus.FAILED, JobStatus.CANCELLED)
        if not runner.store.transition(job.id, resumable, JobStatus.QUEUED, error=None):
            raise click.UsageError(
                f"job {job.id} is {job.status.value}; only failed or cancelled jobs resume"
            )
    elif recipe is None:
        raise click.UsageError("give a RECIPE file, or --resume JOB_ID")
    else:
        kind, parsed = _recipe(recipe, ctx.args, runner)
        job = runner.create(parsed, kind=kind)
    click.echo(f"job {job.id}: logs and checkpoints in {runner.job_dir(job)}", err=True)
    with (
        progress_bar(f"job {job.id}", as_json=ctx.obj, unit="steps") as on_step,
        contextlib.redirect_stdout(sys.stderr),  # stdout is for the result (--json)
    ):
        job = run_job(runner, job.id, on_step=on_step)
    report_job(job, ctx.obj)
    if job.status is not JobStatus.SUCCEEDED:
        sys.exit(1)


cli.add_command(run_cmd, name="run")


@cli.command(context_settings=_EXTRA_ARGS)
@click.argument("recipe", type=click.Path(path_type=Path))
@click.pass_context
def submit(ctx: click.Context, recipe: Path) -> None:
    """Queue a job; a worker process trains it (see `list`, `logs`)."""
    runner = open_runner()
    kind, parsed = _recipe(recipe, ctx.args, runner)
    job = runner.submit(parsed, kind=kind)
    if ctx.obj:
        print_json(job_summary(job))
    else:
        click.echo(f"{job.id} {job.status.value}")


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
def validate(recipe: Path) -> None:
    """Check RECIPE's keys and values without running it: print "ok", or every error (exit
    code 2). Its models and data are checked when a job is made (`run`, `submit`)."""
    load_job_recipe(recipe)
    click.echo("ok")


@cli.command(name="list")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_obj
def list_cmd(as_json: bool, status: str | None, limit: int) -> None:
    """Jobs, newest first."""
    runner = open_runner()
    jobs = runner.store.list_jobs(status=JobStatus(status) if status else None, limit=limit)
    if as_json:
        print_json([job_summary(j) for j in jobs])
        return
    print_table(
        ["id", "status", "model", "created", "fine-tuned model"],
        [
            (
                j.id,
                j.status.value,
                j.model,
                j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                j.fine_tuned_model,
            )
            for j in jobs
        ],
    )


@cli.command()
@click.argument("job_id")
@click.pass_obj
def show(as_json: bool, job_id: str) -> None:
    """A job's state, result and recent events."""
    runner = open_runner()
    job = runner.get(job_id)
    report_job(job, as_json)
    if not as_json and job.kind == FEDERATED:
        for line in round_lines(runner.store, job):
            click.echo(f"  {line}")
    if not as_json:
        for event in reversed(runner.store.list_events(job.id, limit=10)):
            click.echo(f"  {event.created_at:%H:%M:%S} {event.level:5} {event.message}")


@cli.command()
@click.argument("job_id")
@click.pass_obj
def cancel(as_json: bool, job_id: str) -> None:
    """Cancel a queued or running job."""
    report_job(open_runner().cancel(job_id), as_json)


@cli.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def logs(job_id: str, follow: bool) -> None:
    """The job's training log (stdout and stderr of its worker)."""
    runner = open_runner()
    job = runner.get(job_id)
    path = runner.job_dir(job) / "train.log"
    if not path.exists() and not follow:
        raise FinetuneError(
            ErrorCode.NOT_FOUND,
            f"job {job_id} ({job.status.value}) has no log file: a job started by "
            "`llm-finetune run` prints to its terminal, a queued one has not started",
        )
    offset = 0
    while True:
        if path.exists():
            with path.open("rb") as log:
                log.seek(offset)
                chunk = log.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        if not follow or runner.get(job_id).status.finished:
            break
        time.sleep(1.0)


@cli.command()
@click.argument("adapter_ref")
@click.option("--name", help="Registry model name (default: <adapter model>-merged).")
@click.pass_obj
def merge(as_json: bool, adapter_ref: str, name: str | None) -> None:
    """Merge an adapter version into its base and register the result (kind: merged)."""
    from finetune.merge import merge_adapter

    runner = open_runner()
    version = merge_adapter(open_registry(runner.stack), adapter_ref, name)
    if as_json:
        print_json(VersionObject.model_validate(version).model_dump(mode="json"))
    else:
        click.echo(f"registered {version.ref} (merged from {adapter_ref})")


@cli.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the cleaned JSONL goes (default: DATA with .clean.jsonl); the report beside it.",
)
@click.option(
    "--type",
    "kind",
    type=click.Choice(["chat", "alpaca", "text"]),
    default="chat",
    show_default=True,
)
@click.option(
    "--against",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Evaluation JSONL that training rows must not overlap (repeatable).",
)
@click.option("--max-chars", type=click.IntRange(1), default=32_000, show_default=True)
@click.option(
    "--near-duplicate",
    type=click.FloatRange(0.5, 1.0),
    default=0.8,
    show_default=True,
    help="Similarity (Jaccard of character 5-grams) at which a row copies an earlier one.",
)
@click.option(
    "--redactor",
    default="pii",
    show_default=True,
    help="'pii', 'package.module:callable', or 'none' to keep personal data as it is.",
)
@click.pass_obj
def clean(
    as_json: bool,
    data: Path,
    out: Path | None,
    kind: str,
    against: tuple[Path, ...],
    max_chars: int,
    near_duplicate: float,
    redactor: str,
) -> None:
    """Remove malformed, too long, duplicate and near-duplicate rows and rows that overlap
    evaluation data; mask personal data; write the cleaned file and a report."""
    from core.redaction import load_redactor
    from finetune.clean import CleanConfig, clean_file

    out = out or data.with_suffix(".clean.jsonl")
    config = CleanConfig(
        max_chars=max_chars,
        near_duplicate=near_duplicate,
        redactor=None if redactor == "none" else load_redactor(redactor, "--redactor"),
    )
    report = clean_file(data, out, kind, config, list(against))
    if as_json:
        print_json({"output": str(out), **report.summary()})
        return
    removed = ", ".join(f"{len(v)} {k}" for k, v in report.removed.items()) or "none"
    click.echo(
        f"kept {report.kept} rows in {out}; removed: {removed}; personal data masked in "
        f"{report.masked}; report: {out.with_suffix('.report.json')}"
    )


@cli.command()
@click.argument("ref")
@click.option(
    "--format",
    "export_format",
    type=click.Choice(["onnx", "gguf"]),
    default="onnx",
    show_default=True,
    help="onnx: ONNX Runtime GenAI (the edge bundle, the gateway's onnx backend); "
    "gguf: llama.cpp's file.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8", "int4"]),
    default="int8",
    show_default=True,
    help="Weights of the export (GGUF: f32, q8_0, q4_0).",
)
@click.option("--name", help="Registry model name (default: <model>-onnx or <model>-gguf).")
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Chat JSONL whose first user messages are the parity prompts (default: demo questions).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    help="Share of greedy tokens the export must agree on "
    "(default: fp32 0.99, int8 0.9, int4 0.8).",
)
@click.pass_obj
def export(
    as_json: bool,
    ref: str,
    export_format: str,
    precision: str,
    name: str | None,
    prompts: Path | None,
    min_agreement: float | None,
) -> None:
    """Export a version to ONNX or GGUF, check its greedy answers against eager PyTorch, and
    register it (format: onnx or gguf) with the source as its parent."""
    from finetune.data import read_rows
    from finetune.export.gguf import export_gguf
    from finetune.export.onnx import export_onnx

    questions = None
    if prompts is not None:
        questions = [
            next(m["content"] for m in row["messages"] if m["role"] == "user")
            for _, row in read_rows(prompts)
        ]
    exporter = export_gguf if export_format == "gguf" else export_onnx
    with progress_bar(f"exporting {ref}", as_json=as_json, unit="steps") as on_stage:
        version, parity = exporter(
            open_registry(open_runner().stack),
            ref,
            precision,  # type: ignore[arg-type]
            name=name,
            prompts=questions,
            min_agreement=min_agreement,
            on_stage=on_stage,
        )
    if as_json:
        print_json(VersionObject.model_validate(version).model_dump(mode="json"))
    else:
        click.echo(
            f"registered {version.ref} ({precision} {export_format} of {version.parent}): "
            f"greedy tokens {parity.token_agreement:.1%} equal to PyTorch, answers "
            f"{parity.exact_match:.1%} exactly, size {version.metrics['size_ratio']:.2f}x"
        )


@cli.command("demo-data")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--skill",
    "skills",
    multiple=True,
    type=click.Choice(list(SKILLS)),
    help="A demo skill to write (repeatable; default: every skill).",
)
@click.option(
    "--train-rows",
    type=click.IntRange(1, 10_000_000),
    default=DEMO_SPEC.num_train,
    show_default=True,
    help="Train rows per skill.",
)
@click.option(
    "--eval-rows",
    type=click.IntRange(0, 100_000),
    default=DEMO_SPEC.num_eval,
    show_default=True,
    help="Eval rows per skill (at most a quarter of a small input space).",
)
@click.option("--seed", type=int, default=DEMO_SPEC.seed, show_default=True)
@click.pass_obj
def demo_data(
    as_json: bool,
    directory: Path,
    skills: tuple[str, ...],
    train_rows: int,
    eval_rows: int,
    seed: int,
) -> None:
    """Write the demo skills' chat JSONL splits, DIR/<skill>/train.jsonl and eval.jsonl, without
    building or registering a model. With the defaults the rows are those the demo model was
    built from; no eval input occurs in a train split, nor in the demo suites' held-out rows."""
    written = write_skill_splits(directory, seed, train_rows, eval_rows, skills or tuple(SKILLS))
    rows = [
        (name, len(read_jsonl(f.train)), len(read_jsonl(f.eval)), str(f.train.parent))
        for name, f in written.items()
    ]
    if as_json:
        print_json(
            [{"skill": n, "train_rows": t, "eval_rows": e, "directory": d} for n, t, e, d in rows]
        )
    else:
        print_table(["skill", "train", "eval", "directory"], rows)


cli.add_command(federated)
cli.add_command(tune)


def main(argv: list[str] | None = None) -> int:
    return run(cli, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())
