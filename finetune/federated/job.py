"""The `federated` job kind: one federated fine-tuning run, start to registration.

The job starts a SuperLink (and, for a local run, one SuperNode per silo), starts the Flower
App on it with `flwr run`, reports each completed round as a job event (and as a checkpoint,
so that a job whose worker died resumes after its last completed round), then writes the
final adapter, draws the per-round curve and registers the adapter with its lineage."""

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from core.errors import ErrorCode
from finetune.data import read_rows
from finetune.errors import FinetuneError, RecipeError
from finetune.federated import runtime, signing
from finetune.federated.adapter import model_bytes, write_adapter
from finetune.federated.config import FederatedConfig
from finetune.federated.coordinator import ERROR_FILE
from finetune.federated.plan import CoordinatorPlan
from finetune.federated.round_curve import plot_round_curve
from finetune.federated.rounds import RoundLog
from finetune.federated.silo import TRAIN_FILE
from finetune.kinds import JobContext, JobOutcome
from registry.entities import ModelVersion, VersionFormat, VersionKind
from registry.service import Registry

log = logging.getLogger(__name__)

LOCAL = "run"  # SuperLink and one SuperNode per configured silo, on this machine
SERVE = "serve"  # SuperLink only; silos join from their machines
JOB_TAG = "federated_job"
POLL_S = 1.0
SILO_PROCESS = "silo "  # the name of a local silo's SuperNode process: "silo <id>"


def job_recipe(config: FederatedConfig, mode: str) -> dict[str, Any]:
    """What the job row stores: the validated config and how the silos connect."""
    return {"mode": mode, "config": config.model_dump(mode="json")}


def resolve_base(registry: Registry, config: FederatedConfig) -> ModelVersion:
    version = registry.resolve(config.base_model)
    if version.kind is VersionKind.ADAPTER:
        raise RecipeError(
            f"base_model {version.ref} is an adapter; federate on its base ({version.parent})",
            param="base_model",
        )
    return version


def check_silo_data(folder: Path) -> None:
    """A silo's rows readable (DataError names the bad lines) before anything starts."""
    read_rows(Path(folder).expanduser() / TRAIN_FILE, "chat")


def check_before_start(config: FederatedConfig, mode: str) -> None:
    """Before any process starts: a local run's silos (rows readable, LoRA agreed); a
    served federation's signing key."""
    if mode == LOCAL:
        config.check_silos()
        for silo in config.silos:
            check_silo_data(Path(silo.data))
    else:
        _serve_signing_key(config)


def _serve_signing_key(config: FederatedConfig) -> Path:
    param = "transport.signing_key"
    if config.transport.signing_key is None:
        raise RecipeError(
            f"{param} is required by serve: silos run only a Flower App signed by a key they "
            "trust; make one with `ssh-keygen -t ed25519 -N '' -f KEY` and give the silos "
            "its public half for their --trusted-entities",
            param=param,
        )
    path = Path(config.transport.signing_key).expanduser()
    signing.load_signing_key(path, param)
    return path


def _start_supernodes(
    processes: runtime.Processes, config: FederatedConfig, job_dir: Path, trusted: Path
) -> None:
    transport = config.transport
    certs = runtime.certificates(transport)
    for silo in config.silos:
        node_config = {"silo-id": silo.id, "data": str(Path(silo.data).expanduser().resolve())}
        if silo.lora is not None:
            node_config["lora"] = silo.lora.model_dump_json()
        clientappio = f"127.0.0.1:{runtime.free_port()}"
        processes.app_addresses.append(clientappio)
        command = runtime.supernode_command(
            f"127.0.0.1:{transport.fleet_port}",
            node_config,
            clientappio,
            trusted_entities=trusted,
            root_certificates=certs.ca if certs else None,
        )
        processes.start(
            f"{SILO_PROCESS}{silo.id}",
            command,
            job_dir / f"silo-{silo.id}.log",
            runtime.environment(),
        )


def _coordinate(ctx: JobContext, config: FederatedConfig, mode: str) -> RoundLog:
    """Run (or resume) the federation; returns the round log once every round completed."""
    job_dir = ctx.job_dir
    transport = config.transport
    processes = runtime.Processes(app_addresses=[f"127.0.0.1:{transport.serverapp_port}"])
    log_file = job_dir / "coordinator.log"
    try:
        superlink = processes.start(
            "superlink",
            runtime.superlink_command(
                transport, job_dir, transport.authorized_silo_keys is not None
            ),
            log_file,
            runtime.environment(),
        )
        runtime.wait_for_port(
            "127.0.0.1", transport.control_port, superlink, "the SuperLink", log_file
        )
        flwr_home = runtime.flower_home(job_dir, transport)
        if transport.authorized_silo_keys is not None:
            for key in _authorized_keys(Path(transport.authorized_silo_keys).expanduser()):
                runtime.flwr(["supernode", "register", str(key)], flwr_home, log_file)
        if mode == LOCAL:
            key_path, trusted = signing.write_signing_key(job_dir, f"job-{ctx.job.id}")
            _start_supernodes(processes, config, job_dir, trusted)
        else:
            key_path = _serve_signing_key(config)
        key = signing.load_signing_key(key_path, "transport.signing_key")
        run_config = {
            "job-dir": str(job_dir.resolve()),
            signing.SIGNATURE_KEY: signing.sign_app(key, runtime.APP_DIR),
        }
        started = json.loads(
            runtime.flwr(
                [
                    "run",
                    str(runtime.APP_DIR),
                    "--run-config",
                    " ".join(f"{k}={runtime._toml_string(v)}" for k, v in run_config.items()),
                    "--format",
                    "json",
                ],
                flwr_home,
                log_file,
            )
        )
        run_id = int(started["run-id"])
        ctx.store.add_event(ctx.job.id, f"Flower run {run_id} started on the SuperLink")
        control = runtime.ControlClient(transport)
        try:
            return _follow(ctx, config, run_id, control, processes, (flwr_home, log_file))
        finally:
            control.close()
    finally:
        processes.stop()


def _follow(
    ctx: JobContext,
    config: FederatedConfig,
    run_id: int,
    control: runtime.ControlClient,
    processes: runtime.Processes,
    flwr_cli: tuple[Path, Path],
) -> RoundLog:
    reported = RoundLog.open(ctx.job_dir).completed
    while True:
        rounds = RoundLog.open(ctx.job_dir)
        for record in rounds.records[reported:]:
            silos = ", ".join(sorted(s.silo_id for s in record.silos)) or "secure aggregate"
            message = (
                f"Round {record.round}/{config.rounds}: train loss={record.train_loss:.4f} "
                f"from {len(record.silos)} silos ({silos})"
            )
            data = {"round": record.round, "train_loss": record.train_loss}
            if record.epsilon is not None:
                message += f", epsilon={record.epsilon:.3g}"
                data["epsilon"] = record.epsilon
            if record.rejected:
                message += f"; dropped {len(record.rejected)}: {'; '.join(record.rejected)}"
            ctx.store.add_event(ctx.job.id, message, data=data)
            ctx.store.add_checkpoint(
                ctx.job.id, record.round, _relative(rounds.folder, ctx.stack.resolved_home), data
            )
            reported = record.round
        # A local silo whose SuperNode died rejoins: it takes part from the next round.
        for name in processes.restart_exited(SILO_PROCESS):
            ctx.store.add_event(ctx.job.id, f"The {name} SuperNode exited; restarted it", "warn")
        if ctx.stop.is_set():
            runtime.flwr(["stop", str(run_id)], *flwr_cli)
            return rounds
        status, sub_status = control.status(run_id)
        if status == "finished":
            rounds = RoundLog.open(ctx.job_dir)
            if sub_status == "completed" and rounds.completed == config.rounds:
                if reported < rounds.completed:
                    continue  # report the last rounds first
                return rounds
            raise FinetuneError(
                ErrorCode.INTERNAL,
                f"the federation stopped after round {rounds.completed} of {config.rounds} "
                f"({sub_status}): {_last_error(ctx.job_dir)}",
                api_code="federation_failed",
            )
        time.sleep(POLL_S)


def _last_error(job_dir: Path) -> str:
    """The coordinator's last error line (what the ServerApp raised), for the job's error."""
    reason = job_dir / "rounds" / ERROR_FILE
    return reason.read_text().strip() if reason.exists() else "see coordinator.log"


def _authorized_keys(path: Path) -> list[Path]:
    """The public-key files an authorized-keys list names, one path per line."""
    if not path.is_file():
        raise RecipeError(f"transport.authorized_silo_keys: {path} does not exist")
    keys = [
        Path(line.strip()).expanduser() for line in path.read_text().splitlines() if line.strip()
    ]
    missing = [str(k) for k in keys if not k.is_file()]
    if missing:
        raise RecipeError(f"transport.authorized_silo_keys: no key file {missing[0]}")
    return keys


def _relative(path: Path, home: Path) -> str:
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


def register_federated(
    ctx: JobContext, config: FederatedConfig, base: ModelVersion, base_dir: Path, rounds: RoundLog
) -> ModelVersion:
    """The final adapter as a version (`kind: adapter`) with the federation's lineage."""
    existing = ctx.registry.list_versions(
        kind=VersionKind.ADAPTER, tags={JOB_TAG: ctx.job.id}, include_archived=True, limit=1
    )
    if existing:
        return existing[0]
    adapter_dir = ctx.job_dir / "adapter"
    arrays = rounds.arrays()
    assert arrays is not None  # every round completed
    write_adapter(base_dir, config.lora, arrays, adapter_dir, base.ref)
    plot_round_curve(rounds.records, adapter_dir / "round_curve.png")
    silos: dict[str, str] = {}
    for record in rounds.records:
        for silo in record.silos:
            silos[silo.silo_id] = silo.data_digest
    lineage = {
        "base": base.ref,
        "rounds": config.rounds,
        "strategy": config.strategy.model_dump(mode="json"),
        "lora": config.lora.model_dump(mode="json"),
        "training": config.training.model_dump(mode="json"),
        "privacy": config.privacy.model_dump(mode="json"),
        "silos": [{"silo_id": s, "data_digest": d} for s, d in sorted(silos.items())],
        "per_round": [
            {
                "round": r.round,
                "train_loss": r.train_loss,
                "num_examples": r.num_examples,
                "silos": [s.silo_id for s in r.silos],
                "failures": r.failures,
                "rejected": r.rejected,
                "bytes_sent": r.bytes_sent,
                "bytes_received": r.bytes_received,
                "epsilon": r.epsilon,
            }
            for r in rounds.records
        ],
        "full_model_bytes": model_bytes(base_dir),
    }
    (adapter_dir / "federation.json").write_text(json.dumps(lineage, indent=1))
    last = rounds.records[-1]
    metrics = {"train_loss": last.train_loss, "rounds": float(config.rounds)}
    if last.epsilon is not None and math.isfinite(last.epsilon):
        metrics["epsilon"] = last.epsilon
    return ctx.registry.register(
        config.register_as or f"{base.name}-federated",
        adapter_dir,
        kind=VersionKind.ADAPTER,
        format=VersionFormat.PEFT_LORA,
        parent=base.ref,
        metrics=metrics,
        tags={
            JOB_TAG: ctx.job.id,
            "federated": "true",
            "strategy": config.strategy.name,
            "rounds": config.rounds,
            "silo_count": len(silos),  # the ids are in federation.json: too many for a tag
            "differential_privacy": str(config.privacy.differential_privacy.enabled).lower(),
            "secure_aggregation": str(config.privacy.secure_aggregation.enabled).lower(),
            "lora_r": config.lora.lora_r,
            "base": base.ref,
        },
        dataset_digests=sorted(set(silos.values())),
        source=f"llm-finetune federated job {ctx.job.id}",
        description=f"LoRA adapter trained by {len(silos)} silos over {config.rounds} "
        f"federated rounds ({config.strategy.name})",
        owner=ctx.job.owner,
    )


def run_federated(ctx: JobContext) -> JobOutcome:
    mode = ctx.job.recipe["mode"]
    config = FederatedConfig.model_validate(ctx.job.recipe["config"])
    base = resolve_base(ctx.registry, config)
    check_before_start(config, mode)
    base_dir = ctx.registry.local_copy(base)
    ctx.job_dir.mkdir(parents=True, exist_ok=True)
    CoordinatorPlan(
        job_id=ctx.job.id, config=config, base_ref=base.ref, base_dir=str(base_dir)
    ).write(ctx.job_dir)
    rounds = _coordinate(ctx, config, mode)
    if ctx.stop.is_set():
        return JobOutcome()
    version = register_federated(ctx, config, base, base_dir, rounds)
    last = rounds.records[-1]
    metrics = {"train_loss": last.train_loss, "rounds": float(len(rounds.records))}
    if last.epsilon is not None and math.isfinite(last.epsilon):
        metrics["epsilon"] = last.epsilon
    return JobOutcome(registered=version, metrics=metrics)
