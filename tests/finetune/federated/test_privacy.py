"""Differential privacy (client-side clipping, server-side noise, epsilon from Opacus's RDP
accountant) and SecAgg+ switched on together, on the real runtime: the noise and the clipping
measured on the result, and what the silos sent checked for unmasked updates."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray
from safetensors.torch import load_file

from core.settings import StackSettings
from finetune.federated.adapter import adapter_keys, initial_adapter
from finetune.federated.config import DifferentialPrivacy, LoraSettings
from finetune.federated.privacy import epsilon_after
from finetune.federated.runtime import free_port
from finetune.federated.signing import write_signing_key
from registry.service import open_registry
from tests.finetune.federated.conftest import (
    make_certificates,
    serve_and_join,
    tiny_config,
    write_config,
)
from tests.finetune.federated.fleet_relay import FleetRelay

ADAPTER = "adapter_model.safetensors"


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    dp = DifferentialPrivacy(enabled=True, noise_multiplier=1.0, delta=1e-5)
    one, five = epsilon_after(dp, 1, 1.0), epsilon_after(dp, 5, 1.0)
    assert 0 < one < five
    louder = dp.model_copy(update={"noise_multiplier": 2.0})
    assert epsilon_after(louder, 5, 1.0) < five
    assert math.isinf(epsilon_after(dp.model_copy(update={"noise_multiplier": 0.0}), 1, 1.0))


def _flat(tensors: dict[str, torch.Tensor] | list[np.ndarray]) -> np.ndarray:
    """An adapter's tensors as one vector, in the order silos and coordinator use."""
    if isinstance(tensors, dict):
        tensors = [tensors[key].numpy() for key in adapter_keys(tensors)]
    return np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors])


def _pushed_vectors(contents: list) -> list[np.ndarray]:
    """Every list of tensors in what the silos sent, each as one vector: ArrayRecords, and
    config-record values holding numpy arrays (SecAgg+'s masked vectors, whose first value
    is the silo's weight)."""
    vectors = []
    for content in contents:
        for record in content.array_records.values():
            arrays = [bytes_to_ndarray(a.data) for a in record.values()]
            vectors.append(_flat(arrays) if arrays else np.zeros(0))
        for record in content.config_records.values():
            for value in record.values():
                items = value if isinstance(value, list) else [value]
                arrays = [
                    bytes_to_ndarray(item)
                    for item in items
                    if isinstance(item, bytes) and item.startswith(b"\x93NUMPY")
                ]
                if arrays:
                    vectors.append(_flat(arrays))
    return vectors


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dp_and_secure_aggregation(
    tmp_path: Path, home: Path, base_model_dir: Path, silo_dirs: dict[str, Path]
) -> None:
    """One round of three silos under DP (clip C, noise multiplier z) and SecAgg+, silos
    joining through a relay that records what they send. From each silo's own trained
    adapter (on its machine) the test computes the clipped updates; the registered adapter
    minus the initial one minus their mean must be Gaussian noise of std z * C / 3."""
    registry = open_registry(StackSettings())
    registry.register("demo", base_model_dir)
    registry.set_alias("demo", "production", 1)
    clip, multiplier, silos = 0.002, 0.8, ("a", "b", "c")
    privacy = {
        "differential_privacy": {
            "enabled": True,
            "clipping_norm": clip,
            "noise_multiplier": multiplier,
        },
        "secure_aggregation": {"enabled": True, "num_shares": 3, "reconstruction_threshold": 2},
    }
    certificates = make_certificates(tmp_path / "certs")
    (tmp_path / "coordinator").mkdir()
    signing_key, trusted = write_signing_key(tmp_path / "coordinator", "coordinator")
    data = tiny_config({s: silo_dirs[s] for s in silos}, privacy=privacy)
    data["silos"] = []
    data["transport"] |= {"certificates": str(certificates), "signing_key": str(signing_key)}
    config = write_config(tmp_path / "f.yaml", data)
    relay_port = free_port()
    joins = {
        silo: [
            "--data",
            str(silo_dirs[silo]),
            "--silo-id",
            silo,
            "--root-certificates",
            str(certificates / "ca.crt"),
            "--trusted-entities",
            str(trusted),
        ]
        for silo in silos
    }
    upstream = f"127.0.0.1:{data['transport']['fleet_port']}"
    with FleetRelay(upstream, relay_port, certificates) as relay:
        served = serve_and_join(tmp_path, config, f"127.0.0.1:{relay_port}", joins)
    assert served.code == 0, served.summary["error"]
    version = registry.resolve(served.summary["registered_version"])
    adapter_dir = registry.local_copy(version)
    lineage = json.loads((adapter_dir / "federation.json").read_text())
    (only_round,) = lineage["per_round"]
    assert only_round["epsilon"] == pytest.approx(
        epsilon_after(DifferentialPrivacy(enabled=True, noise_multiplier=multiplier), 1, 1.0)
    )

    lora = LoraSettings.model_validate(data["lora"])
    initial = _flat(initial_adapter(base_model_dir, lora, 0))
    trained = {
        silo: _flat(
            load_file(home / f"federated/silos/{silo}/round-1/adapter/adapter_model.safetensors")
        )
        for silo in silos
    }
    updates = {silo: trained[silo] - initial for silo in silos}
    # Clipping must bite: every silo's own update is far beyond the bound.
    assert all(np.linalg.norm(u) > 5 * clip for u in updates.values())
    clipped = [u * clip / np.linalg.norm(u) for u in updates.values()]
    final = _flat(load_file(adapter_dir / ADAPTER))

    # The noise the coordinator added, and what it would be had the silos not clipped.
    noise = final - initial - np.mean(clipped, axis=0)
    unclipped_noise = final - initial - np.mean(list(updates.values()), axis=0)
    sigma = multiplier * clip / len(silos)
    # With n values, the sample std is within 4 standard errors (sigma / sqrt(2n)) of sigma
    # with probability 1 - 6e-5; the tolerance below is wider than that.
    n = noise.size
    tolerance = max(0.1, 5 / np.sqrt(2 * n))
    assert abs(noise.std() / sigma - 1) < tolerance, (noise.std(), sigma, n)
    assert abs(noise.mean()) < 5 * sigma / np.sqrt(n)
    # The same check would have caught unclipped updates.
    assert abs(unclipped_noise.std() / sigma - 1) > tolerance, (unclipped_noise.std(), sigma)

    # The coordinator never held one silo's update unmasked: nothing the silos sent is
    # correlated with a silo's clipped adapter (a masked vector is uniform noise).
    vectors = [v[-initial.size :] for v in _pushed_vectors(relay.pushed_contents())]
    sent = [v for v in vectors if v.size == initial.size]
    assert len(sent) == len(silos), [v.size for v in vectors]  # one masked vector per silo
    for silo, update in zip(silos, clipped, strict=True):
        for vector in sent:
            for target in (initial + update, update):
                corr = np.corrcoef(vector, target)[0, 1]
                assert abs(corr) < 0.2, f"silo {silo} sent its adapter unmasked ({corr:.2f})"
