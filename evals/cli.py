"""`llm-evals`: explain why a version answered as it did (attribution heat maps)."""

import asyncio
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from core.callers import Caller
from core.console import print_json, run
from core.settings import StackSettings
from evals.explain.attribution import METHODS
from evals.explain.features import GRANULARITIES
from evals.explain.heatmap import write_html, write_png
from evals.explain.protocol import ExplanationRequest
from evals.explain.service import ExplanationService
from evals.explain.standalone import RegistryModelHost
from registry.service import open_registry

PROG = "llm-evals"


@click.group(help=__doc__)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def cli(ctx: click.Context, as_json: bool) -> None:
    ctx.obj = as_json


@cli.command()
@click.option("--model", required=True, help="demo, demo@staging, demo:3, ft:...")
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


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(cli, PROG, argv))
