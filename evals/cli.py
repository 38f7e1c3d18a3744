"""`llm-evals`: run evaluation suites on versions or servers, show and compare runs, watch
traffic for drift and retrain on it (the continuous loop), review the corrections it trains
on, and explain why a version answered as it did (attribution heat maps)."""

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from pydantic import ValidationError

from core.console import print_json, print_table, run
from core.tracing import configure
from evals.continuous import cli as loop_cli
from evals.drift import cli as drift_cli
from evals.explain.protocol import GRANULARITIES, METHODS, ExplanationRequest
from evals.feedback import cli as feedback_cli

if TYPE_CHECKING:
    from evals.compare import Comparison
    from evals.runs import EvalRun
    from evals.service import Evaluations

# Commands import the evaluation machinery (torch, transformers, captum) when they run, so
# that help and bad input answer at once.

PROG = "llm-evals"


@click.group(help=__doc__)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def cli(ctx: click.Context, as_json: bool) -> None:
    ctx.obj = as_json


def _evaluations() -> "Evaluations":
    from evals.service import Evaluations

    return Evaluations.open()


def _interval(value: dict[str, float]) -> str:
    return f"{value['value']:.4g} [{value['low']:.4g}, {value['high']:.4g}]"


def _print_run(run: "EvalRun") -> None:
    scored = run.version or run.model
    click.echo(f"{run.id}  {run.suite} on {scored} ({run.target}): {run.status.value}")
    if run.error:
        click.echo(f"error: {run.error}")
    print_table(
        ("metric", "value [95% interval]"),
        [(name, _interval(value)) for name, value in run.metrics.items()],
    )


def _run_json(run: "EvalRun") -> dict:
    return {**run.__dict__, "status": run.status.value}


def _complete_model(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    from registry.completion import complete_model_ref  # the registry only when completing

    return complete_model_ref(ctx, param, incomplete)


@cli.command("run")
@click.argument("suite")
@click.option(
    "--model",
    required=True,
    help="demo, demo@staging, demo:3, ft:..., a served name.",
    shell_complete=_complete_model,
)
@click.option("--base-url", help="Score an OpenAI-compatible server instead of loading the model.")
@click.option("--api-key", envvar="OPENAI_API_KEY", default="unused", show_default=False)
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--reuse", is_flag=True, help="Return a finished run of this suite and version.")
@click.pass_obj
def run_suite(as_json: bool, suite, model, base_url, api_key, concurrency, reuse) -> None:
    """Score SUITE (a name in configs/evals/ or a YAML path) on a model; record the run."""
    from evals.service import HttpOptions

    configure("llm-evals")
    evaluations = _evaluations()
    http = None if base_url is None else HttpOptions(base_url, api_key, concurrency)
    result = evaluations.run(
        evaluations.suite(suite), model, http=http, progress=not as_json, reuse=reuse
    )
    print_json(_run_json(result)) if as_json else _print_run(result)


@cli.command("show")
@click.argument("run_id")
@click.option("--examples", type=click.IntRange(0, 100_000), default=0, help="Print N outputs.")
@click.pass_obj
def show(as_json: bool, run_id, examples) -> None:
    """A run's metrics with their intervals (and outputs with --examples)."""
    evaluations = _evaluations()
    found = evaluations.runs.get(run_id)
    outputs = evaluations.runs.examples(found)[:examples] if examples else []
    if as_json:
        print_json({**_run_json(found), "examples": outputs})
        return
    _print_run(found)
    for output in outputs:
        click.echo(f"{output['id']}: {output['prediction']!r} (reference {output['reference']!r})")


@cli.command("list")
@click.option("--version", help="Only runs that scored this version (demo:3).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.pass_obj
def list_runs(as_json: bool, version, limit) -> None:
    """Evaluation runs, newest first (running ones included)."""
    found = _evaluations().runs.list_runs(limit, version)
    if as_json:
        print_json([_run_json(r) for r in found])
        return
    print_table(
        ("id", "suite", "scored", "status", "created"),
        [
            (r.id, r.suite, r.version or r.model, r.status.value, f"{r.created_at:%Y-%m-%d %H:%M}")
            for r in found
        ],
    )


def _print_comparison(comparison: "Comparison", changed: int) -> None:
    a, b = comparison.a, comparison.b
    click.echo(f"A {a.id} ({a.version or a.model})  vs  B {b.id} ({b.version or b.model})")
    print_table(
        ("metric", "a", "b", "b - a [95% interval]", "p", "test"),
        [
            (d.metric, f"{d.a:.4g}", f"{d.b:.4g}", _interval(d.paired.delta.to_dict()),
             f"{d.paired.p_value:.3g}", d.paired.test)
            for d in comparison.deltas
        ],
    )  # fmt: skip
    click.echo(f"{len(comparison.changed)} examples changed")
    for example in comparison.changed[:changed]:
        click.echo(f"  {example['id']}: {example['a']!r} -> {example['b']!r}")


@cli.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--changed", type=click.IntRange(0, 100_000), default=10, show_default=True)
@click.pass_obj
def compare(as_json: bool, run_a, run_b, changed) -> None:
    """Per-metric deltas (B minus A) with paired tests, and the examples that changed."""
    comparison = _evaluations().compare(run_a, run_b)
    if as_json:
        print_json(
            {
                "a": comparison.a.id,
                "b": comparison.b.id,
                "deltas": [d.to_dict() for d in comparison.deltas],
                "changed": comparison.changed,
            }
        )
        return
    _print_comparison(comparison, changed)


@cli.command()
@click.option(
    "--model",
    required=True,
    help="demo, demo@staging, demo:3, ft:...",
    shell_complete=_complete_model,
)
@click.option("--prompt", help="A user message, rendered with the model's chat template.")
@click.option("--message", "messages", multiple=True, help="ROLE:CONTENT, repeatable (chat).")
@click.option("--raw-prompt", help="A plain text prompt, without the chat template.")
@click.option("--target", help="The answer to explain (default: the model's greedy answer).")
@click.option("--method", type=click.Choice(METHODS), default="feature_ablation", show_default=True)
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="words", show_default=True)
@click.option("--baseline", default="pad", show_default=True, help="pad, unk, or a token.")
@click.option("--samples", type=click.IntRange(1, 500), default=25, show_default=True)
@click.option("--steps", type=click.IntRange(2, 256), default=16, show_default=True)
@click.option("--max-tokens", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--top-k", type=click.IntRange(1, 50), default=5, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write a heat map.")
@click.option("--png", "png_path", type=click.Path(path_type=Path), help="Write a heat map.")
@click.pass_obj
def explain(as_json: bool, model, prompt, messages, raw_prompt, target, method,
            granularity, baseline, samples, steps, max_tokens, top_k, seed, html_path,
            png_path) -> None:  # fmt: skip
    """Attribute the answer of MODEL to the prompt's features; print the top ones."""
    if sum(given is not None for given in (prompt, raw_prompt, messages or None)) != 1:
        raise click.UsageError("give exactly one of --prompt, --message or --raw-prompt")
    chat = None if prompt is None else [{"role": "user", "content": prompt}]
    if messages:
        chat = []
        for message in messages:
            role, sep, content = message.partition(":")
            if not sep:
                raise click.BadParameter(f"{message!r} is not ROLE:CONTENT", param_hint="--message")
            chat.append({"role": role, "content": content})
    try:
        fields = dict(
            model=model, prompt=raw_prompt, messages=chat, target=target, method=method,
            granularity=granularity, baseline=baseline, n_samples=samples, n_steps=steps,
            max_tokens=max_tokens, top_k=top_k, seed=seed,
        )  # fmt: skip
        request = ExplanationRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise click.UsageError(f"{where}: {first['msg']}".removeprefix(": ")) from None
    import asyncio

    from core.callers import Caller
    from core.settings import StackSettings
    from evals.explain.heatmap import write_html, write_png
    from evals.explain.service import ExplanationService
    from evals.explain.standalone import RegistryModelHost
    from registry.service import open_registry

    settings = StackSettings()
    service = ExplanationService(RegistryModelHost(open_registry(settings)))
    operator = Caller(None, admin=True, name=settings.actor)
    result = asyncio.run(service.explain(request, operator))
    for path, write in ((html_path, write_html), (png_path, write_png)):
        if path is not None:
            write(result, path)
            click.echo(f"wrote {path}", err=True)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    took = f"{result.method}, {result.seconds:.2f} s"
    click.echo(f"{result.model} answered {result.answer!r} ({took})")
    for feature in result.top_features:
        click.echo(f"  {feature.score:+9.4f}  {feature.feature}")
    faith = result.faithfulness
    click.echo(
        f"faithfulness: top {faith.k} removed -{faith.top_k_drop:.2f}, random -"
        f"{faith.random_drop:.2f} (score {faith.score:+.2f})"
    )


VALIDATED = ("suite", "gates", "policy")


def _kind_of(path: Path) -> str:
    """Which of VALIDATED a file is: the one whose top-level keys it shares most of."""
    import yaml

    from evals.continuous.policy import Policy
    from evals.gates import GatesConfig
    from evals.suites import SuiteSpec

    models = dict(zip(VALIDATED, (SuiteSpec, GatesConfig, Policy), strict=True))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise click.BadParameter(f"{path.name} is not valid YAML: {err}") from None
    keys = set(data) if isinstance(data, dict) else set()
    shared = {kind: len(keys & set(model.model_fields)) for kind, model in models.items()}
    best = max(shared.values())
    kinds = [kind for kind, count in shared.items() if count == best]
    if best == 0 or len(kinds) > 1:
        raise click.UsageError(
            f"cannot tell whether {path.name} is a suite, gates or a policy; give --kind"
        )
    return kinds[0]


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(VALIDATED),
    help="What FILE is (default: told from its keys).",
)
def validate(file: Path, kind: str | None) -> None:
    """Check an evaluation suite, a gate config or a loop policy without running it: print
    "ok", or every error (exit code 2). A suite's metrics and data, and the files a policy
    names, are checked too."""
    from evals.continuous.policy import load_policy
    from evals.gates import load_gates
    from evals.suites import load_suite

    kind = kind or _kind_of(file)
    if kind == "suite":
        load_suite(str(file), file.parent)
    elif kind == "gates":
        load_gates(file)
    else:
        load_policy(file)
    click.echo("ok")


cli.add_command(drift_cli.monitor)
cli.add_command(drift_cli.drift)
cli.add_command(loop_cli.loop)
cli.add_command(feedback_cli.feedback)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(cli, PROG, argv))
