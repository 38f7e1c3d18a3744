"""`llm-evals monitor` (check a model's traffic for drift, once or every so often) and
`llm-evals drift list|show|report` (the stored checks, and a picture of them over time)."""

import time
from dataclasses import asdict
from pathlib import Path

import click

from core.configs import load_yaml_config
from core.console import print_json, print_table
from core.database import open_database
from core.settings import StackSettings
from evals.drift.checks import DriftCheck, DriftStore
from evals.drift.config import DriftConfig
from evals.drift.traffic import open_traffic_source
from evals.tables import CHAIN
from registry.service import open_registry
from registry.settings import RegistrySettings


def _store() -> DriftStore:
    stack = StackSettings()
    return DriftStore(open_database(stack.resolved_database_url, CHAIN))


def _print_check(check: DriftCheck) -> None:
    verdict = f"DRIFT ({', '.join(check.alarms)})" if check.drifted else "no drift"
    click.echo(
        f"{check.id}  {check.version}: {verdict}, score {check.score:.2f}; {check.window_n} "
        f"requests {check.window_start:%H:%M:%S}-{check.window_end:%H:%M:%S} against "
        f"{check.reference['n']} ({check.reference['kind']})"
    )


def _check_json(check: DriftCheck) -> dict:
    return asdict(check)


@click.command()
@click.argument("model")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="A YAML file of drift settings (window, reference, alpha, ...).",
)
@click.option("--window", type=click.IntRange(20, 1_000_000), help="Requests per window.")
@click.option(
    "--alpha",
    type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
    help="False-alarm rate per window.",
)
@click.option(
    "--reference-data",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Compare with these chat JSONL files instead of the first requests.",
)
@click.option("--every", type=click.FloatRange(1), help="Check again every this many seconds.")
@click.pass_obj
def monitor(as_json: bool, model, config_path, window, alpha, reference_data, every) -> None:
    """Check MODEL's traffic (demo: its production version; demo@staging; demo:3) for drift,
    store the check and print it; with --every, keep checking."""  # fmt: skip
    config = (
        load_yaml_config(config_path, DriftConfig, "drift config") if config_path
        else DriftConfig()
    )  # fmt: skip
    changes = {"window": window, "alpha": alpha}
    config = config.model_copy(update={k: v for k, v in changes.items() if v is not None})
    config = DriftConfig.model_validate(config.model_dump())
    if reference_data:
        config.reference.data = list(reference_data)
    stack = StackSettings()
    registry = open_registry(stack, RegistrySettings(promotion_gate=None))
    version = registry.resolve(model).ref
    from evals.drift.monitor import DriftMonitor, TemplateRenderer  # torch, transformers

    drift = DriftMonitor(
        open_traffic_source(stack),
        open_database(stack.resolved_database_url, CHAIN),
        TemplateRenderer(registry),
    )
    while True:
        check = drift.check(version, config)
        if check is None:
            click.echo(f"{version}: not enough traffic yet (a window needs {config.min_window} "
                       "requests, and as many before it for the reference)", err=True)  # fmt: skip
        elif as_json:
            print_json(_check_json(check))
        else:
            _print_check(check)
        if every is None:
            return
        time.sleep(every)


@click.group()
def drift() -> None:
    """Stored drift checks."""


@drift.command("list")
@click.argument("model")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.pass_obj
def list_checks(as_json: bool, model, limit) -> None:
    """MODEL's newest checks (a name: every version of it)."""
    checks = _store().history(model, limit=limit)
    if as_json:
        print_json([_check_json(c) for c in checks])
        return
    print_table(
        ("check", "checked", "version", "requests", "score", "drift"),
        [
            (c.id, f"{c.created_at:%Y-%m-%d %H:%M:%S}", c.version, c.window_n,
             f"{c.score:.2f}", ", ".join(c.alarms) or "-")
            for c in checks
        ],
    )  # fmt: skip


@drift.command("show")
@click.argument("check_id")
@click.pass_obj
def show_check(as_json: bool, check_id) -> None:
    """One check, signal by signal."""
    check = _store().get(check_id)
    if as_json:
        print_json(_check_json(check))
        return
    _print_check(check)
    print_table(
        ("signal", "effect", "p-value", "reference n", "window n"),
        [(s.signal, f"{s.effect:.3f}", f"{s.p_value:.3g}", s.reference_n, s.window_n)
         for s in check.signals],
    )  # fmt: skip


@drift.command("report")
@click.argument("model")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write an HTML page.")
@click.option("--png", "png_path", type=click.Path(path_type=Path), help="Write a PNG picture.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
def report(model, html_path, png_path, limit) -> None:
    """Draw MODEL's drift over time."""
    if html_path is None and png_path is None:
        raise click.UsageError("give --html PATH and/or --png PATH")
    checks = _store().history(model, limit=limit)
    if not checks:
        raise click.ClickException(
            f"no drift checks of {model!r} yet; `llm-evals monitor {model}` makes one"
        )
    from evals.drift.report import write_html, write_png  # matplotlib

    for path, write in ((html_path, write_html), (png_path, write_png)):
        if path is not None:
            click.echo(f"wrote {write(model, checks, path)}")
