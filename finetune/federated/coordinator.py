"""The coordinator: a Flower `ServerApp` run by the SuperLink. It reads the job's plan from the
job folder (`job-dir` in the run config), resumes after the last completed round recorded
there, and runs the remaining rounds: sample silos, send them the global adapter and the
round's plan, aggregate what comes back (SecAgg+ when switched on), persist the round."""

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.serverapp import Grid, ServerApp

from finetune.federated.adapter import initial_adapter
from finetune.federated.plan import CoordinatorPlan, RoundPlan
from finetune.federated.privacy import epsilon_after
from finetune.federated.rounds import RoundLog, RoundRecord, SiloReport
from finetune.federated.strategies import build_strategy, sampled_silos

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
MAX_ROUND_ATTEMPTS = 3  # a round that gets too few results is run again, this often


def payload_bytes(message: Message) -> int:
    """Bytes of a message's content: tensors, and byte or string values of its records."""
    if not message.has_content():
        return 0
    total = 0
    for record in message.content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(array.data) for array in record.values())
        elif isinstance(record, ConfigRecord | MetricRecord):
            for value in record.values():
                items = value if isinstance(value, list) else [value]
                total += sum(len(v) if isinstance(v, bytes | str) else 8 for v in items)
    return total


class MeteredGrid(Grid):
    """The SuperLink's grid, counting the bytes of every message sent and received, and
    bounding every wait by the round timeout (a silo that dies is then a failure)."""

    def __init__(self, grid: Grid, timeout: float):
        self.grid = grid
        self.timeout = timeout
        self.sent = 0
        self.received = 0
        self.errors: list[str] = []  # why silos failed, as their ClientApps said

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.sent += sum(payload_bytes(m) for m in messages)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._received(self.grid.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        self.sent += sum(payload_bytes(m) for m in messages)
        wait = min(timeout or self.timeout, self.timeout)
        return self._received(self.grid.send_and_receive(messages, timeout=wait))

    def _received(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        self.received += sum(payload_bytes(m) for m in replies)
        self.errors += [m.error.reason for m in replies if m.has_error()]
        return replies


def _fit_workflow(plan: CoordinatorPlan) -> Any:
    secagg = plan.config.privacy.secure_aggregation
    if not secagg.enabled:
        return default_fit_workflow
    return SecAggPlusWorkflow(
        num_shares=secagg.num_shares,
        reconstruction_threshold=secagg.reconstruction_threshold,
        clipping_range=secagg.clipping_range,
        quantization_range=secagg.quantization_range,
        timeout=plan.config.strategy.round_timeout_s,
    )


def _round_config(plan: CoordinatorPlan) -> Any:
    config = plan.config

    def fit_config(server_round: int) -> dict[str, Any]:
        round_plan = RoundPlan(
            round=server_round,
            base_model=plan.base_ref,
            lora=config.lora,
            training=config.training,
            proximal_mu=config.strategy.proximal_mu if config.strategy.name == "fedprox" else 0.0,
        )
        return {"plan": round_plan.model_dump_json()}

    return fit_config


def _reports(metrics: dict[str, Any]) -> list[SiloReport]:
    return [SiloReport(**silo) for silo in json.loads(str(metrics.get("silos", "[]")))]


def run_rounds(grid: Grid, context: Context, job_dir: Path) -> RoundLog:
    """The remaining rounds of the job in `job_dir`; returns the round log."""
    plan = CoordinatorPlan.read(job_dir)
    config = plan.config
    rounds = RoundLog.open(job_dir)
    arrays = rounds.arrays()
    if arrays is None:
        arrays = initial_adapter(Path(plan.base_dir), config.lora, config.training.seed)
    else:
        log.info("resuming after round %d of %d", rounds.completed, config.rounds)
    strategy = build_strategy(config, ndarrays_to_parameters(arrays), _round_config(plan))
    legacy = LegacyContext(
        context,
        config=ServerConfig(
            num_rounds=config.rounds, round_timeout=config.strategy.round_timeout_s
        ),
        strategy=strategy,
    )
    metered = MeteredGrid(grid, config.strategy.round_timeout_s)
    thread, stop, registered = start_update_client_manager_thread(grid, legacy.client_manager)
    registered.wait()
    fit = _fit_workflow(plan)
    settings = config.strategy
    state = ConfigRecord({Key.START_TIME: time.time()})
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = state
    try:
        for server_round in range(rounds.completed + 1, config.rounds + 1):
            state[Key.CURRENT_ROUND] = server_round
            for attempt in range(1, MAX_ROUND_ATTEMPTS + 1):
                legacy.client_manager.wait_for(settings.min_available_silos, timeout=86400)
                params = ArrayRecord(arrays)
                legacy.state.array_records[MAIN_PARAMS_RECORD] = params
                sent, received, started = metered.sent, metered.received, time.monotonic()
                fit(metered, legacy)
                aggregated = legacy.state.array_records[MAIN_PARAMS_RECORD]
                if aggregated is not params:
                    break
                log.warning(
                    "round %d attempt %d: fewer than %d silos reported; running it again",
                    server_round,
                    attempt,
                    settings.min_silos,
                )
            else:
                why = f"; the last silo error: {metered.errors[-1]}" if metered.errors else ""
                raise RuntimeError(
                    f"round {server_round}: fewer than {settings.min_silos} silos reported in "
                    f"{MAX_ROUND_ATTEMPTS} attempts{why}"
                )
            arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(aggregated, True))
            fit_metrics = legacy.history.metrics_distributed_fit
            metrics = {key: values[-1][1] for key, values in fit_metrics.items()}
            reports = _reports(metrics)
            dp = config.privacy.differential_privacy
            epsilon = (
                epsilon_after(
                    dp, server_round, sampled_silos(config) / settings.min_available_silos
                )
                if dp.enabled
                else None
            )
            record = RoundRecord(
                round=server_round,
                train_loss=float(metrics.get("train_loss", float("nan"))),
                num_examples=int(metrics.get("num_examples", 0)),
                silos=reports,
                failures=max(0, sampled_silos(config) - len(reports)),
                bytes_sent=metered.sent - sent,
                bytes_received=metered.received - received,
                seconds=time.monotonic() - started,
                epsilon=epsilon,
                rejected=json.loads(str(metrics.get("rejected", "[]"))),
            )
            rounds.complete(record, [np.asarray(a) for a in arrays])
            log.info("round %d of %d done: %s", server_round, config.rounds, record)
    finally:
        stop.set()
        thread.join()
    return rounds


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job_dir = Path(str(context.run_config["job-dir"]))
    try:
        run_rounds(grid, context, job_dir)
    except Exception as err:
        # The job reads why the run failed from here (the SuperLink keeps only a status).
        (job_dir / "rounds" / ERROR_FILE).write_text(str(err))
        raise
