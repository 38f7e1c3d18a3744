"""The coordinator's aggregation: Flower's FedAvg, FedProx or FedAdam (weighted by the
silos' example counts), optionally under Flower's central-DP wrapper with client-side
clipping, and a guard that a round counts only when `min_silos` silos reported."""

import json
from collections.abc import Callable
from typing import Any

from flwr.common import FitIns, FitRes, Parameters, Scalar
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)

from finetune.federated.config import FederatedConfig


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


class RequireSilos(Strategy):
    """Delegates to `inner`, but aggregates a round only when `min_results` silos reported
    (a silo that died mid-round is a failure the round survives while enough others report)."""

    def __init__(self, inner: Strategy, min_results: int):
        self.inner = inner
        self.min_results = min_results

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if len(results) < self.min_results:
            return None, {}
        return self.inner.aggregate_fit(server_round, results, failures)

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
    strategy: Strategy = RequireSilos(inner, settings.min_silos)
    dp = config.privacy.differential_privacy
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
