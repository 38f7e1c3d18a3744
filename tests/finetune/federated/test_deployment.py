"""A real deployment on one machine: `federated serve` (a SuperLink with TLS and SuperNode
authentication) and silos that `federated join` through a recording relay, which finds that
every message the coordinator receives holds adapter tensors and counts, nothing else."""

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flwr.common import bytes_to_ndarray

from core.settings import StackSettings
from finetune.demo.skills import read_jsonl
from finetune.federated.adapter import initial_adapter
from finetune.federated.config import LoraSettings
from finetune.federated.runtime import free_port
from registry.service import open_registry
from tests.finetune.federated.conftest import tiny_config, write_config
from tests.finetune.federated.fleet_relay import FleetRelay

CLI = [sys.executable, "-m", "finetune"]


def _certificate(subject: str, key, issuer_key, issuer=None, ca: bool = False):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(folder: Path) -> Path:
    """ca.crt, server.pem and server.key for 127.0.0.1, as `transport.certificates` wants."""
    folder.mkdir(parents=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _certificate("llmops test CA", ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP384R1())
    server = _certificate("127.0.0.1", key, ca_key, issuer=ca)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder


def make_silo_key(folder: Path, silo: str) -> tuple[Path, Path]:
    """A silo's ECDSA key pair in OpenSSH format, as Flower's node authentication reads it."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"{silo}.key", folder / f"{silo}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public


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
    data = tiny_config({s: silo_dirs[s] for s in ("a", "b")})
    data["silos"] = []  # silos join from "their machines"
    data["transport"] |= {
        "certificates": str(certificates),
        "authorized_silo_keys": str(authorized),
    }
    config = write_config(tmp_path / "serve.yaml", data)
    relay_port = free_port()
    logs = {}
    with FleetRelay(
        f"127.0.0.1:{data['transport']['fleet_port']}", relay_port, certificates
    ) as relay:
        coordinator = subprocess.Popen(
            [*CLI, "--json", "federated", "serve", str(config)],
            stdout=subprocess.PIPE,
            stderr=(tmp_path / "serve.log").open("wb"),
            env=os.environ,
        )
        silos = {}
        for silo in ("a", "b", "intruder"):
            logs[silo] = tmp_path / f"join-{silo}.log"
            silos[silo] = subprocess.Popen(
                [
                    *CLI,
                    "federated",
                    "join",
                    "--superlink",
                    f"127.0.0.1:{relay_port}",
                    "--data",
                    str(silo_dirs["c" if silo == "intruder" else silo]),
                    "--silo-id",
                    silo,
                    "--root-certificates",
                    str(certificates / "ca.crt"),
                    "--auth-key",
                    str(keys[silo][0]),
                    # A silo may come before the coordinator registered its key, and waits;
                    # the intruder, never registered, gives up.
                    "--registration-wait",
                    "5" if silo == "intruder" else "600",
                ],
                stdout=logs[silo].open("wb"),
                stderr=subprocess.STDOUT,
                env=os.environ,
                start_new_session=True,
            )
        try:
            out, _ = coordinator.communicate(timeout=600)
        finally:
            for process in silos.values():  # each silo's SuperNode and its app processes
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            for process in silos.values():
                process.wait(timeout=30)
            for log in [tmp_path / "serve.log", *logs.values()]:  # shown when the test fails
                print(f"== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        # The SuperLink refused the silo whose key the coordinator did not register.
        assert silos["intruder"].returncode != 0
        intruder_log = logs["intruder"].read_text()
        assert "No SuperNode found with the given public key" in intruder_log
        assert "has not registered this silo's public key within 5 s" in intruder_log
        summary = json.loads(out)
        assert coordinator.returncode == 0, summary["error"]

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
