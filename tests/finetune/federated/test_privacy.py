"""Differential privacy (client-side clipping, server-side noise, epsilon from Opacus's RDP
accountant) and SecAgg+ switched on together, on the real runtime."""

import json
import math
from pathlib import Path

import pytest

from core.settings import StackSettings
from finetune.cli import main
from finetune.federated.config import DifferentialPrivacy
from finetune.federated.privacy import epsilon_after
from registry.service import open_registry
from tests.finetune.federated.conftest import tiny_config, write_config


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    dp = DifferentialPrivacy(enabled=True, noise_multiplier=1.0, delta=1e-5)
    one, five = epsilon_after(dp, 1, 1.0), epsilon_after(dp, 5, 1.0)
    assert 0 < one < five
    louder = dp.model_copy(update={"noise_multiplier": 2.0})
    assert epsilon_after(louder, 5, 1.0) < five
    assert math.isinf(epsilon_after(dp.model_copy(update={"noise_multiplier": 0.0}), 1, 1.0))


@pytest.mark.slow
def test_dp_and_secure_aggregation(
    tmp_path: Path, home: Path, base_model_dir: Path, silo_dirs: dict[str, Path], capsys
) -> None:
    registry = open_registry(StackSettings())
    registry.register("demo", base_model_dir)
    registry.set_alias("demo", "production", 1)
    privacy = {
        "differential_privacy": {"enabled": True, "clipping_norm": 0.5, "noise_multiplier": 0.8},
        "secure_aggregation": {"enabled": True, "num_shares": 3, "reconstruction_threshold": 2},
    }
    data = tiny_config(silo_dirs, privacy=privacy)
    data["strategy"]["min_silos"] = 3
    code = main(["--json", "federated", "run", str(write_config(tmp_path / "f.yaml", data))])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary["error"]
    version = registry.resolve(summary["registered_version"])
    lineage = json.loads((registry.local_copy(version) / "federation.json").read_text())
    (only_round,) = lineage["per_round"]
    sampled = DifferentialPrivacy(enabled=True, noise_multiplier=0.8)
    assert only_round["epsilon"] == pytest.approx(epsilon_after(sampled, 1, 1.0))
    assert version.metrics["epsilon"] == pytest.approx(only_round["epsilon"])
    assert lineage["privacy"]["secure_aggregation"]["enabled"] is True
    assert version.tags["secure_aggregation"] == version.tags["differential_privacy"] == "true"
