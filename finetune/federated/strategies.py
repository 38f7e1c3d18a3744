"""The coordinator's aggregation: Flower's FedAvg, FedProx or FedAdam (weighted by the
silos' example counts), optionally under Flower's central-DP wrapper with client-side
clipping, behind a guard that trusts no silo: it drops a result whose tensors or report do not
fit (the round goes on without it), clips every update and caps every weight on the
coordinator, and counts a round only when `min_silos` good results remain."""

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.common import (
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)

from finetune.federated.config import SILO_ID_PATTERN, FederatedConfig

log = logging.getLogger(__name__)

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def aggregate_silo_metrics(results: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """The round's loss weighted by example counts, and each silo's report (as JSON)."""
    total = sum(count for count, _ in results)
    silos = [
        {
            "silo_id": str(m.get("silo_id", "")),
            "data_digest": str(m.get("data_digest", "")),
            "num_examples": count,
            "train_loss": float(m.get("train_loss", float("nan"))),
        }
        for count, m in results
    ]
    loss = sum(s["train_loss"] * s["num_examples"] for s in silos) / max(total, 1)
    return {"train_loss": loss, "num_examples": total, "silos": json.dumps(silos)}


class Rejected(ValueError):
    """A silo's result the coordinator does not aggregate; the message says why."""


def check_report(num_examples: int, metrics: dict[str, Scalar]) -> str:
    """The silo id of a well-formed report, or Rejected."""
    silo_id = metrics.get("silo_id")
    if not isinstance(silo_id, str) or not re.match(SILO_ID_PATTERN, silo_id):
        shown = str(silo_id)[:70]
        raise Rejected(f"silo id {shown!r} is not 1 to 64 letters, digits, '.', '_' or '-'")
    if not isinstance(num_examples, int) or num_examples <= 0:
        raise Rejected(f"silo {silo_id} reported {num_examples!r} examples")
    digest = metrics.get("data_digest")
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise Rejected(f"silo {silo_id} reported a data digest that is not sha256:<64 hex>")
    loss = metrics.get("train_loss")
    if not isinstance(loss, float | int) or not math.isfinite(loss):
        raise Rejected(f"silo {silo_id} reported a train loss that is not a finite number")
    return silo_id


def check_arrays(parameters: Parameters, adapter: NDArrays, *, any_float: bool = False) -> NDArrays:
    """The tensors of a result, each the shape and dtype of the adapter's, finite; or
    Rejected. With `any_float`, floating tensors of another precision are converted."""
    try:
        arrays = parameters_to_ndarrays(parameters)
    except Exception as err:  # whatever the bytes were, they are not tensors
        raise Rejected(f"its tensors could not be read ({type(err).__name__})") from None
    if len(arrays) != len(adapter):
        raise Rejected(f"it sent {len(arrays)} tensors, the adapter has {len(adapter)}")
    for index, (array, expected) in enumerate(zip(arrays, adapter, strict=True)):
        if any_float and np.issubdtype(array.dtype, np.floating):
            array = arrays[index] = array.astype(expected.dtype)
        if array.shape != expected.shape or array.dtype != expected.dtype:
            raise Rejected(
                f"tensor {index} is {array.dtype}{list(array.shape)}, the adapter's is "
                f"{expected.dtype}{list(expected.shape)}"
            )
        if not np.isfinite(array).all():
            raise Rejected(f"tensor {index} holds values that are not finite")
    return arrays


def clip_update(arrays: NDArrays, adapter: NDArrays, bound: float) -> NDArrays:
    """`arrays` moved back towards `adapter` so that their difference has L2 norm <= bound."""
    deltas = [a.astype(np.float64) - g for a, g in zip(arrays, adapter, strict=True)]
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in deltas))
    if norm <= bound:
        return arrays
    scale = bound / norm
    return [(g + d * scale).astype(g.dtype) for d, g in zip(deltas, adapter, strict=True)]


def capped_weights(counts: list[int], ratio: float) -> list[int]:
    """Each count capped at `ratio` times the lower median count."""
    cap = max(1, int(ratio * sorted(counts)[(len(counts) - 1) // 2]))
    return [min(count, cap) for count in counts]


class GuardedAggregation(Strategy):
    """Delegates to `inner` the silos' results that pass the checks, each update clipped to
    `max_update_norm` and each weight capped (`capped_weights`); a round aggregates only
    when `min_results` of them remain. Under SecAgg+ every result carries the same unmasked
    sum, so the guard checks that aggregate and clips its update instead: a mean of
    clipped updates stays within the bound."""

    def __init__(
        self,
        inner: Strategy,
        min_results: int,
        max_update_norm: float,
        max_weight_ratio: float,
        secure_aggregation: bool,
    ):
        self.inner = inner
        self.min_results = min_results
        self.max_update_norm = max_update_norm
        self.max_weight_ratio = max_weight_ratio
        self.secure_aggregation = secure_aggregation
        self.adapter: NDArrays = []  # the global adapter sent this round

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.adapter = parameters_to_ndarrays(parameters)
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        accepted, rejected = self._checked(results)
        for reason in rejected:
            log.warning("round %d: dropped a silo's result: %s", server_round, reason)
        if len(accepted) < self.min_results:
            return None, {}
        parameters, metrics = self.inner.aggregate_fit(server_round, accepted, failures)
        return parameters, {**metrics, "rejected": json.dumps(rejected)}

    def _checked(
        self, results: list[tuple[ClientProxy, FitRes]]
    ) -> tuple[list[tuple[ClientProxy, FitRes]], list[str]]:
        """The results to aggregate (clipped, weights capped) and why the others were not."""
        good: list[tuple[ClientProxy, FitRes, NDArrays]] = []
        rejected: list[str] = []
        seen: set[str] = set()
        shared: NDArrays | None = None
        for proxy, result in results:
            try:
                silo_id = check_report(result.num_examples, result.metrics)
                if silo_id in seen:
                    raise Rejected(f"silo id {silo_id} was reported by two silos this round")
                if self.secure_aggregation:
                    if shared is None:  # SecAgg+ dequantizes the sum to float64
                        shared = check_arrays(result.parameters, self.adapter, any_float=True)
                    arrays = shared
                else:
                    arrays = check_arrays(result.parameters, self.adapter)
            except Rejected as why:
                if self.secure_aggregation:  # its update is in the sum: the sum is spoilt
                    return [], [str(why)]
                rejected.append(str(why))
                continue
            seen.add(silo_id)
            good.append((proxy, result, arrays))
        if not good:
            return [], rejected
        counts = [result.num_examples for _, result, _ in good]
        if not self.secure_aggregation:  # under SecAgg+ the weights are inside the sum
            counts = capped_weights(counts, self.max_weight_ratio)
        accepted = [
            (
                proxy,
                dataclasses.replace(
                    result,
                    parameters=ndarrays_to_parameters(
                        clip_update(arrays, self.adapter, self.max_update_norm)
                    ),
                    num_examples=count,
                ),
            )
            for (proxy, result, arrays), count in zip(good, counts, strict=True)
        ]
        return accepted, rejected

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


def build_strategy(
    config: FederatedConfig,
    initial: Parameters,
    fit_config: Callable[[int], dict[str, Scalar]],
) -> Strategy:
    settings = config.strategy
    common: dict[str, Any] = {
        "fraction_fit": settings.fraction_silos,
        "fraction_evaluate": 0.0,
        "min_fit_clients": settings.min_silos,
        "min_evaluate_clients": 1,
        "min_available_clients": settings.min_available_silos,
        "on_fit_config_fn": fit_config,
        "initial_parameters": initial,
        "accept_failures": True,
        "fit_metrics_aggregation_fn": aggregate_silo_metrics,
    }
    if settings.name == "fedprox":
        inner: Strategy = FedProx(**common, proximal_mu=settings.proximal_mu)
    elif settings.name == "fedadam":
        inner = FedAdam(**common, eta=settings.server_learning_rate, tau=1e-3)
    else:
        inner = FedAvg(**common)
    dp = config.privacy.differential_privacy
    strategy: Strategy = GuardedAggregation(
        inner,
        settings.min_silos,
        max_update_norm=min(settings.max_update_norm, dp.clipping_norm)
        if dp.enabled
        else settings.max_update_norm,
        max_weight_ratio=settings.max_weight_ratio,
        secure_aggregation=config.privacy.secure_aggregation.enabled,
    )
    if dp.enabled:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy,
            noise_multiplier=dp.noise_multiplier,
            clipping_norm=dp.clipping_norm,
            num_sampled_clients=sampled_silos(config),
        )
    return strategy


def sampled_silos(config: FederatedConfig) -> int:
    """How many silos a round samples when min_available_silos are connected (as FedAvg counts)."""
    settings = config.strategy
    return max(int(settings.min_available_silos * settings.fraction_silos), settings.min_silos)
