"""A real deployment on one machine: `federated serve` (a SuperLink with TLS and SuperNode
authentication) and silos that `federated join` through a recording relay, which finds that
every message the coordinator receives holds adapter tensors and counts, nothing else."""

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.common import bytes_to_ndarray

from core.settings import StackSettings
from finetune.demo.skills import read_jsonl
from finetune.federated.adapter import initial_adapter
from finetune.federated.config import LoraSettings
from finetune.federated.runtime import free_port
from finetune.federated.signing import write_signing_key
from registry.service import open_registry
from tests.finetune.federated.conftest import (
    make_certificates,
    make_silo_key,
    serve_and_join,
    tiny_config,
    write_config,
)
from tests.finetune.federated.fleet_relay import FleetRelay


@pytest.mark.slow
def test_serve_and_join_with_tls_and_node_authentication(
    tmp_path: Path, home: Path, base_model_dir: Path, silo_dirs: dict[str, Path]
) -> None:
    registry = open_registry(StackSettings())
    registry.register("demo", base_model_dir)
    registry.set_alias("demo", "production", 1)
    certificates = make_certificates(tmp_path / "certs")
    keys = {silo: make_silo_key(tmp_path, silo) for silo in ("a", "b", "intruder")}
    authorized = tmp_path / "authorized-silos.txt"
    authorized.write_text(f"{keys['a'][1]}\n{keys['b'][1]}\n")
    (tmp_path / "coordinator").mkdir()
    signing_key, trusted = write_signing_key(tmp_path / "coordinator", "coordinator")
    data = tiny_config({s: silo_dirs[s] for s in ("a", "b")})
    data["silos"] = []  # silos join from "their machines"
    data["transport"] |= {
        "certificates": str(certificates),
        "authorized_silo_keys": str(authorized),
        "signing_key": str(signing_key),
    }
    config = write_config(tmp_path / "serve.yaml", data)
    relay_port = free_port()
    joins = {
        silo: [
            "--data",
            str(silo_dirs["c" if silo == "intruder" else silo]),
            "--silo-id",
            silo,
            "--root-certificates",
            str(certificates / "ca.crt"),
            "--trusted-entities",
            str(trusted),
            "--auth-key",
            str(keys[silo][0]),
            # A silo may come before the coordinator registered its key, and waits; the
            # intruder, never registered, gives up.
            "--registration-wait",
            "5" if silo == "intruder" else "600",
        ]
        for silo in ("a", "b", "intruder")
    }
    upstream = f"127.0.0.1:{data['transport']['fleet_port']}"
    with FleetRelay(upstream, relay_port, certificates) as relay:
        served = serve_and_join(tmp_path, config, f"127.0.0.1:{relay_port}", joins)
    # The SuperLink refused the silo whose key the coordinator did not register.
    assert served.silo_codes["intruder"] != 0
    assert "No SuperNode found with the given public key" in served.silo_logs["intruder"]
    assert "has not registered this silo's public key within 5 s" in served.silo_logs["intruder"]
    summary = served.summary
    assert served.code == 0, summary["error"]

    version = registry.resolve(summary["registered_version"])
    lineage = json.loads((registry.local_copy(version) / "federation.json").read_text())
    assert [s["silo_id"] for s in lineage["silos"]] == ["a", "b"]  # not the intruder

    # Every message the silos sent, as the coordinator received it.
    contents = relay.pushed_contents()
    lora = LoraSettings.model_validate(data["lora"])
    adapter_shapes = sorted(a.shape for a in initial_adapter(base_model_dir, lora, 0))
    texts = {
        message["content"]
        for silo in ("a", "b")
        for row in read_jsonl(silo_dirs[silo] / "train.jsonl")
        for message in row["messages"]
    }
    assert len(contents) == 2  # one reply per silo and round
    for content in contents:
        (arrays,) = content.array_records.values()
        tensors = [bytes_to_ndarray(a.data) for a in arrays.values()]  # legacy: npy bytes
        assert sorted(t.shape for t in tensors) == adapter_shapes
        assert all(np.issubdtype(t.dtype, np.floating) for t in tensors)
        values = {}
        for record in [*content.config_records.values(), *content.metric_records.values()]:
            values |= dict(record)
        strings = [v for v in values.values() if isinstance(v, str)]
        assert not any(text in s for text in texts for s in strings)
        assert not any(isinstance(v, list) for v in values.values())  # no token ids
        assert {k.rsplit(".", 1)[-1] for k in values} <= {
            "num_examples",
            "silo_id",
            "data_digest",
            "train_loss",
            "code",
            "message",
        }, values
