"""`llm-finetune federated`: federated LoRA fine-tuning on Flower's deployment runtime.

    llm-finetune federated run CONFIG      a local federation: a SuperLink and one SuperNode
                                           per silo of the config, as separate processes
    llm-finetune federated serve CONFIG    the coordinator of a real deployment (a SuperLink
                                           waiting for silos to join)
    llm-finetune federated join --superlink HOST:PORT --data DIR --trusted-entities FILE
                                           a silo: a SuperNode training on DIR/train.jsonl,
                                           running only apps signed by a key in FILE

Both `run` and `serve` are jobs (`llm-finetune list`, `show`), registered as an adapter
version when every round completed."""

import contextlib
import re
import sys
from pathlib import Path

import click

from finetune.federated.config import SILO_ID_PATTERN, LoraSettings, load_federated_config
from finetune.jobs import JobStatus
from finetune.kinds import FEDERATED
from registry.service import open_registry


def _run_job(config_path: Path, mode: str, as_json: bool) -> None:
    from finetune.federated.job import check_before_start, job_recipe, resolve_base
    from finetune.job_report import open_runner, report_job
    from finetune.worker import run_job

    config = load_federated_config(config_path)
    runner = open_runner()
    # Bad input stops here, before a job exists or a process starts (the job checks again).
    resolve_base(open_registry(runner.stack), config)
    check_before_start(config, mode)
    job = runner.store.create(
        kind=FEDERATED,
        model=config.base_model,
        recipe=job_recipe(config, mode),
        created_by=runner.stack.actor,
        suffix="federated",
    )
    click.echo(f"job {job.id}: logs and round state in {runner.job_dir(job)}", err=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the result (--json)
        job = run_job(runner, job.id)
    report_job(job, as_json)
    if job.status is not JobStatus.SUCCEEDED:
        sys.exit(1)


@click.group()
def federated() -> None:
    """Federated LoRA fine-tuning: silos keep their data, only adapters travel."""


@federated.command(name="run")
@click.argument("config", type=click.Path(path_type=Path))
@click.pass_obj
def run_cmd(as_json: bool, config: Path) -> None:
    """A local federation: a SuperLink and one SuperNode per configured silo."""
    _run_job(config, "run", as_json)


@federated.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.pass_obj
def serve(as_json: bool, config: Path) -> None:
    """The coordinator of a real deployment; silos join with `federated join`."""
    _run_job(config, "serve", as_json)


@federated.command()
@click.option("--superlink", required=True, help="The coordinator's Fleet API, HOST:PORT.")
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder with train.jsonl (chat rows); it never leaves this machine.",
)
@click.option("--silo-id", help="This silo's name in the lineage (default: the folder name).")
@click.option(
    "--root-certificates",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The coordinator's CA certificate (TLS); without it the connection is insecure.",
)
@click.option(
    "--trusted-entities",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="YAML file of the Ed25519 public keys whose signed Flower Apps this silo runs "
    "(key_id: ssh-ed25519 AAAA...); the coordinator's key, as its operator sends it.",
)
@click.option(
    "--auth-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="This silo's ECDSA private key, when the coordinator authenticates silos.",
)
@click.option(
    "--base",
    type=click.Path(path_type=Path, file_okay=False),
    help="The base model's folder here (default: fetched from this machine's registry).",
)
@click.option("--lora", help='LoRA settings to insist on, as JSON ({"lora_r": 8, ...}).')
@click.option(
    "--registration-wait",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="Seconds to keep trying while the coordinator has not registered this silo's key.",
)
def join(
    superlink: str,
    data: Path,
    silo_id: str | None,
    root_certificates: Path | None,
    trusted_entities: Path,
    auth_key: Path | None,
    base: Path | None,
    lora: str | None,
    registration_wait: float,
) -> None:
    """Join a federation as a silo (a SuperNode: runs until stopped, e.g. with Ctrl-C)."""
    from finetune.federated import runtime
    from finetune.federated.job import check_silo_data
    from finetune.federated.signing import load_trusted_entities

    check_silo_data(data)
    load_trusted_entities(trusted_entities)
    silo_id = silo_id or data.resolve().name
    if not re.match(SILO_ID_PATTERN, silo_id):
        raise click.BadParameter(
            f"{silo_id!r} is not 1 to 64 letters, digits, '.', '_' or '-' (starting with a "
            "letter or digit); the coordinator drops results from such a silo",
            param_hint="--silo-id",
        )
    node_config = {"silo-id": silo_id, "data": str(data.resolve())}
    if base is not None:
        node_config["base"] = str(base.resolve())
    if lora is not None:
        node_config["lora"] = LoraSettings.model_validate_json(lora).model_dump_json()
    command = runtime.supernode_command(
        superlink,
        node_config,
        f"127.0.0.1:{runtime.free_port()}",
        trusted_entities=trusted_entities.resolve(),
        root_certificates=root_certificates,
        private_key=auth_key,
    )
    sys.exit(runtime.run_supernode(command, registration_wait))
