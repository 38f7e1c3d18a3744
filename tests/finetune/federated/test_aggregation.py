"""The coordinator trusts no silo: Flower's FedAvg behind the stack's guard (the strategy the
coordinator builds), fed silos' results as Flower hands them over, some of them malicious."""

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters
from flwr.common import parameters_to_ndarrays as arrays_of
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from core.settings import StackSettings
from finetune.federated.adapter import initial_adapter
from finetune.federated.config import FederatedConfig
from finetune.federated.job import register_federated
from finetune.federated.rounds import RoundLog, RoundRecord, SiloReport
from finetune.federated.strategies import build_strategy
from finetune.jobs import JobStore
from finetune.kinds import FEDERATED, JobContext
from registry.service import open_registry

ADAPTER = [np.zeros((4, 8), np.float32), np.zeros((8, 4), np.float32)]
DIGEST = "sha256:" + "ab" * 32


class Node(ClientProxy):
    """A connected silo as the client manager lists it; only its id matters here."""

    def get_properties(self, *args: Any, **kwargs: Any) -> Any: ...
    def get_parameters(self, *args: Any, **kwargs: Any) -> Any: ...
    def fit(self, *args: Any, **kwargs: Any) -> Any: ...
    def evaluate(self, *args: Any, **kwargs: Any) -> Any: ...
    def reconnect(self, *args: Any, **kwargs: Any) -> Any: ...


def _round(silos: int, privacy: dict[str, Any] | None = None, **strategy: Any):
    """The coordinator's strategy after it sent round 1 (the global adapter ADAPTER)."""
    config = FederatedConfig(
        base_model="demo",
        strategy={"min_silos": 2, "min_available_silos": silos, **strategy},
        privacy=privacy or {},
    )
    initial = ndarrays_to_parameters(ADAPTER)
    strategy_ = build_strategy(config, initial, lambda r: {"plan": "{}"})
    manager = SimpleClientManager()
    nodes = [Node(str(i)) for i in range(silos)]
    for node in nodes:
        manager.register(node)
    sent = strategy_.configure_fit(1, initial, manager)
    assert len(sent) == silos
    return strategy_, nodes


def _result(arrays: list[np.ndarray] | Parameters, silo_id: Any, count: int = 24) -> FitRes:
    parameters = arrays if isinstance(arrays, Parameters) else ndarrays_to_parameters(arrays)
    metrics = {"data_digest": DIGEST, "train_loss": 1.0}
    if silo_id is not None:
        metrics["silo_id"] = silo_id
    return FitRes(Status(Code.OK, ""), parameters, count, metrics)


def _update(norm: float, seed: int) -> list[np.ndarray]:
    """Adapter-shaped tensors whose L2 norm (their update from ADAPTER) is `norm`."""
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=a.shape) for a in ADAPTER]
    scale = norm / np.sqrt(sum(float((a * a).sum()) for a in arrays))
    return [(a * scale).astype(np.float32) for a in arrays]


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel().astype(np.float64) for a in arrays])


def test_a_silo_claiming_many_examples_is_capped_and_its_update_clipped() -> None:
    strategy, nodes = _round(3, max_update_norm=1.0, max_weight_ratio=4.0)
    honest = [_update(0.5, 1), _update(0.5, 2)]
    attack = _update(1000.0, 3)
    results = [
        (nodes[0], _result(honest[0], "a")),
        (nodes[1], _result(honest[1], "b")),
        (nodes[2], _result(attack, "mallory", count=10**9)),
    ]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    got = _flat(arrays_of(parameters))
    # mallory's update clipped to norm 1, its weight capped at 4x the median count (24).
    clipped = _flat(attack) / np.linalg.norm(_flat(attack))
    expected = (24 * _flat(honest[0]) + 24 * _flat(honest[1]) + 96 * clipped) / 144
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.linalg.norm(got) <= 1.0
    reports = {s["silo_id"]: s["num_examples"] for s in json.loads(metrics["silos"])}
    assert reports == {"a": 24, "b": 24, "mallory": 96}
    assert json.loads(metrics["rejected"]) == []


def test_a_silo_with_wrong_shapes_or_dtype_is_dropped_and_the_round_goes_on() -> None:
    strategy, nodes = _round(6)
    good = [_update(0.5, 1), _update(0.5, 2)]
    bad = {
        "wrongshape": [np.zeros((4, 9), np.float32), ADAPTER[1]],
        "float64": [a.astype(np.float64) for a in good[0]],
        "toofew": good[0][:1],
        "notfinite": [np.full((4, 8), np.nan, np.float32), ADAPTER[1]],
    }
    results = [(nodes[0], _result(good[0], "a")), (nodes[1], _result(good[1], "b"))]
    results += [(nodes[i + 2], _result(a, n)) for i, (n, a) in enumerate(bad.items())]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    np.testing.assert_allclose(
        _flat(arrays_of(parameters)), (_flat(good[0]) + _flat(good[1])) / 2, atol=1e-7
    )
    assert json.loads(metrics["rejected"]) == [
        "tensor 0 is float32[4, 9], the adapter's is float32[4, 8]",
        "tensor 0 is float64[4, 8], the adapter's is float32[4, 8]",
        "it sent 1 tensors, the adapter has 2",
        "tensor 0 holds values that are not finite",
    ]
    # Too few good results left: no aggregate (the round is run again), nothing raised.
    assert strategy.aggregate_fit(1, results[1:], []) == (None, {})


def test_under_secure_aggregation_the_mean_update_is_clipped() -> None:
    """SecAgg+ hands every silo's result the same unmasked mean (dequantized to float64):
    the guard clips that mean's update; a bad report spoils the round (it is in the sum)."""
    strategy, nodes = _round(3, {"secure_aggregation": {"enabled": True}}, max_update_norm=1.0)
    mean = ndarrays_to_parameters([a.astype(np.float64) for a in _update(30.0, 1)])
    results = [(node, _result(mean, silo)) for node, silo in zip(nodes, "abc", strict=True)]
    parameters, _ = strategy.aggregate_fit(1, results, [])
    got = arrays_of(parameters)
    assert [a.dtype for a in got] == [np.float32, np.float32]
    assert np.linalg.norm(_flat(got)) == pytest.approx(1.0, rel=1e-5)
    results[2] = (nodes[2], _result(mean, "../c"))
    assert strategy.aggregate_fit(1, results, []) == (None, {})


@pytest.mark.parametrize(
    ("silo_id", "reason"),
    [
        (None, "silo id 'None' is not 1 to 64 letters"),
        ("x" * 65, f"silo id '{'x' * 65}' is not 1 to 64 letters"),
        ("../../etc", "silo id '../../etc' is not 1 to 64 letters"),
        (7, "silo id '7' is not 1 to 64 letters"),
        ("a", "silo id a was reported by two silos this round"),
    ],
)
def test_a_silo_with_a_bad_silo_id_is_dropped(silo_id: Any, reason: str) -> None:
    strategy, nodes = _round(3)
    results = [
        (nodes[0], _result(_update(0.5, 1), "a")),
        (nodes[1], _result(_update(0.5, 2), "b")),
        (nodes[2], _result(_update(0.5, 3), silo_id)),
    ]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert parameters is not None
    assert [s["silo_id"] for s in json.loads(metrics["silos"])] == ["a", "b"]
    (rejected,) = json.loads(metrics["rejected"])
    assert rejected.startswith(reason)


def test_lineage_keeps_many_long_silo_ids(tmp_path: Path, home: Path, base_model_dir: Path) -> None:
    stack = StackSettings()
    registry = open_registry(stack)
    base = registry.register("demo", base_model_dir)
    config = FederatedConfig(
        base_model="demo",
        lora={"lora_r": 2, "lora_alpha": 4, "lora_target_modules": ["q_proj", "v_proj"]},
        rounds=1,
    )
    store = JobStore.open(stack.resolved_database_url)
    job = store.create(kind=FEDERATED, model="demo", recipe={}, created_by="test")
    ids = [f"hospital-{i:02d}-" + "x" * 52 for i in range(40)]  # 64 characters each
    rounds = RoundLog.open(tmp_path)
    reports = [SiloReport(s, f"sha256:{i:064x}", 24, 1.0) for i, s in enumerate(ids)]
    rounds.complete(
        RoundRecord(1, 1.0, 960, reports, 0, 1, 1, 0.1),
        initial_adapter(base_model_dir, config.lora, 0),
    )
    ctx = JobContext(job, tmp_path, stack, store, registry, threading.Event())
    version = register_federated(ctx, config, base, base_model_dir, rounds)
    lineage = json.loads((registry.local_copy(version) / "federation.json").read_text())
    assert [s["silo_id"] for s in lineage["silos"]] == sorted(ids)
    assert lineage["per_round"][0]["silos"] == ids
    assert version.tags["silo_count"] == "40"
