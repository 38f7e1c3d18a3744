"""`llm-serve`: run the OpenAI-compatible gateway, and manage its API keys.

With no arguments it serves what the registry holds. With `--demo` (what `make run` does) it
first builds and registers the demo model if the registry does not have it yet, and the demo
embedding model `minilm`."""

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from core.callers import Caller
from core.console import print_json, print_table, run
from core.database import open_database
from core.errors import ErrorCode
from core.settings import StackSettings
from core.tracing import configure
from registry.entities import ModelVersion
from registry.errors import RegistryError
from registry.service import Registry
from serving.config import load_config
from serving.edge.cli import edge
from serving.keys import ALL_MODELS, MAX_RATE, KeyStore
from serving.protocol import CreatedKey, KeyObject
from serving.settings import ServingSettings
from serving.tables import CHAIN

PROG = "llm-serve"
LOOPBACK = "127.0.0.1"


def _registered(registry: Registry, name: str) -> bool:
    try:
        registry.resolve(name)
        return True
    except RegistryError as err:
        if err.code is not ErrorCode.NOT_FOUND:
            raise
        return False


def _ensure_model(
    registry: Registry, name: str, register: Callable[[Registry, str], ModelVersion], what: str
) -> None:
    """Register `name` with `register` unless the registry has it. A gateway replica starting
    at the same time may register the same files first, which is as good."""
    if _registered(registry, name):
        return
    try:
        version = register(registry, name)
    except RegistryError as err:
        if err.code is ErrorCode.ALREADY_EXISTS and _registered(registry, name):
            return
        raise
    click.echo(f"registered {version.ref} ({what}) as {name}@production")


def _build_demo_model(registry: Registry, name: str) -> ModelVersion:
    # Built on first run only; the demo world's training code is imported only then.
    from finetune.demo.build import build_demo_model, register_demo_model
    from finetune.demo.spec import FULL

    click.echo(f"{name}: not in the registry yet; building the demo model (a few minutes) ...")
    with tempfile.TemporaryDirectory() as tmp:
        return register_demo_model(registry, build_demo_model(Path(tmp) / name, FULL), name=name)


def _embedding_model(registry: Registry, name: str) -> ModelVersion:
    from finetune.demo.embedding import register_embedding_model

    return register_embedding_model(registry, name=name)


@click.group(invoke_without_command=True, help=__doc__)
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Serving YAML.")
@click.option("--host", help="Address to listen on (overrides the config).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option(
    "--demo",
    is_flag=True,
    help="Build and register the demo model (LLMOPS_SERVING_DEMO_MODEL) and the demo "
    "embedding model first, where the registry lacks them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    host: str | None,
    port: int | None,
    demo: bool,
    as_json: bool,
) -> None:
    ctx.obj = as_json
    if ctx.invoked_subcommand is not None:
        return
    settings = ServingSettings()
    config = load_config(config_path or settings.config)
    # The gateway's imports (torch, transformers, the evals) cost seconds: not for `keys`,
    # `edge` or a bad config.
    import uvicorn

    from serving.app import create_app, server_options
    from serving.gateway import build_gateway

    config = config.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v})
    configure("llm-serve")
    gateway = build_gateway(config, StackSettings())
    if demo and settings.demo_model:
        _ensure_model(gateway.registry, settings.demo_model, _build_demo_model, "the demo model")
    if demo and settings.embedding_model:
        _ensure_model(
            gateway.registry,
            settings.embedding_model,
            _embedding_model,
            "all-MiniLM-L6-v2 embeddings",
        )
    if not gateway.keys.auth_required() and config.host != LOOPBACK:
        click.echo(
            f"no API keys exist, so the gateway listens on {LOOPBACK} only (not {config.host}); "
            "create one with `llm-serve keys create NAME` to serve other hosts",
            err=True,
        )
        config = config.model_copy(update={"host": LOOPBACK})
    base = f"http://{config.host}:{config.port}/v1"
    auth = "" if gateway.keys.auth_required() else " (no API key needed: none exist yet)"
    click.echo(f"serving at {base}{auth}")
    if demo and settings.demo_model:
        click.echo(
            f"try: curl {base}/chat/completions -H 'Content-Type: application/json' "
            f'-d \'{{"model": "{settings.demo_model}", "messages": '
            '[{"role": "user", "content": "What is 12 + 30?"}], "temperature": 0}\''
        )
    # Its lines go through the stack's handler (`--log-format`), which `run` set up.
    uvicorn.run(create_app(gateway), **server_options(config), log_config=None)


def _keys() -> KeyStore:
    return KeyStore(open_database(StackSettings().resolved_database_url, CHAIN))


@cli.group()
def keys() -> None:
    """Create, list and revoke API keys (stored hashed in the registry database)."""


@keys.command(name="create")
@click.argument("name")
@click.option("--model", "models", multiple=True, help="Allowed model (repeatable); default all.")
@click.option("--admin", is_flag=True, help="May use the registry and key routes.")
@click.option("--rpm", type=click.IntRange(1, MAX_RATE), help="Requests per minute.")
@click.option(
    "--tpm",
    type=click.IntRange(1, MAX_RATE),
    help="Tokens per minute (default: rate_limits.default_tpm).",
)
@click.option("--no-traffic-log", is_flag=True, help="Do not log this key's traffic.")
@click.option("--teach", is_flag=True, help="Its corrections (/v1/feedback) may train models.")
@click.pass_obj
def keys_create(as_json, name, models, admin, rpm, tpm, no_traffic_log, teach) -> None:
    """Create a key; its secret is printed once."""
    key, secret = _keys().create(
        name,
        models=tuple(models) or (ALL_MODELS,),
        admin=admin,
        rpm=rpm,
        tpm=tpm,
        log_traffic=not no_traffic_log,
        teach=teach,
        maker=Caller(None, admin=True, name=StackSettings().actor),
    )
    if as_json:
        created = CreatedKey(**KeyObject.model_validate(key).model_dump(), key=secret)
        print_json(created.model_dump(mode="json"))
    else:
        click.echo(f"created {key.id} ({key.name}); the key is shown only now:\n{secret}")


@keys.command(name="list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.pass_obj
def keys_list(as_json: bool, include_revoked: bool) -> None:
    found = _keys().list_keys(include_revoked=include_revoked)
    if as_json:
        print_json([KeyObject.model_validate(k).model_dump(mode="json") for k in found])
        return
    print_table(
        ("id", "name", "prefix", "models", "admin", "teach", "rpm", "tpm", "revoked"),
        [
            (
                k.id,
                k.name,
                k.prefix + "...",
                ",".join(k.models),
                k.admin,
                k.teach,
                k.rpm or "-",
                k.tpm or "-",
                k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "-",
            )
            for k in found
        ],
    )


@keys.command(name="revoke")
@click.argument("key_id")
@click.pass_obj
def keys_revoke(as_json: bool, key_id: str) -> None:
    key = _keys().revoke(key_id)
    if as_json:
        print_json(KeyObject.model_validate(key).model_dump(mode="json"))
    else:
        click.echo(f"revoked {key.id} ({key.name})")


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Serving YAML (default: llm-serve's --config, else LLMOPS_SERVING_CONFIG).",
)
@click.pass_context
def validate(ctx: click.Context, config_path: Path | None) -> None:
    """Check a serving config without serving: print "ok", or every error (exit code 2)."""
    path = config_path or ctx.find_root().params["config_path"] or ServingSettings().config
    if path is None:
        raise click.UsageError("give --config FILE (or set LLMOPS_SERVING_CONFIG)")
    load_config(path)
    click.echo("ok")


cli.add_command(edge)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(cli, PROG, argv, log_level="info"))
