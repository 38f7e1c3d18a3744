import contextlib
import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from finetune.demo.skills import SKILLS, generate_splits, write_jsonl
from finetune.federated.runtime import free_port

SILO_SKILLS = {"a": "reverse", "b": "upper", "c": "sort"}


@pytest.fixture
def silo_dirs(tmp_path: Path) -> dict[str, Path]:
    """Three silos, each holding 24 rows of a different skill (train.jsonl)."""
    dirs = {}
    for silo, skill in SILO_SKILLS.items():
        rows, _ = generate_splits(SKILLS[skill], 0, 24, 4)
        write_jsonl(tmp_path / "silos" / silo / "train.jsonl", rows)
        dirs[silo] = tmp_path / "silos" / silo
    return dirs


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LLMOPS_HOME of this test, for the job and every process it starts."""
    path = tmp_path / "home"
    monkeypatch.setenv("LLMOPS_HOME", str(path))
    monkeypatch.delenv("LLMOPS_DATABASE_URL", raising=False)
    return path


def tiny_config(silos: dict[str, Path], **keys: Any) -> dict[str, Any]:
    """A federation of a few seconds per round: rank-2 LoRA on q/v, two local steps."""
    return {
        "base_model": "demo",
        "lora": {"lora_r": 2, "lora_alpha": 4, "lora_target_modules": ["q_proj", "v_proj"]},
        "training": {"local_steps": 2, "micro_batch_size": 8, "learning_rate": 1.0e-3},
        "rounds": 1,
        "strategy": {"min_silos": 2, "min_available_silos": len(silos)},
        "transport": {
            "fleet_port": free_port(),
            "serverapp_port": free_port(),
            "control_port": free_port(),
        },
        "silos": [{"id": silo, "data": str(path)} for silo, path in silos.items()],
        **keys,
    }


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def children_named(pid: int, *words: str) -> list[int]:
    """Descendant processes of `pid` whose command line holds every one of `words`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and all(w in cmdline for w in words):
            found.append(int(entry.name))
    return found


def _certificate(
    subject: str, key, issuer_key, issuer=None, ca: bool = False, hosts: tuple[str, ...] = ()
):
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
                [
                    x509.DNSName("localhost"),
                    *(x509.IPAddress(ipaddress.ip_address(h)) for h in ("127.0.0.1", *hosts)),
                ]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(folder: Path, *hosts: str) -> Path:
    """ca.crt, server.pem and server.key for 127.0.0.1 (and `hosts`), as
    `transport.certificates` wants."""
    folder.mkdir(parents=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _certificate("llmops test CA", ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP384R1())
    server = _certificate("127.0.0.1", key, ca_key, issuer=ca, hosts=hosts)
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


CLI = [sys.executable, "-m", "finetune"]


@dataclass
class Served:
    """How a served federation ended: the coordinator's summary and exit code, and each
    silo's exit code and output."""

    summary: dict[str, Any]
    code: int
    silo_codes: dict[str, int]
    silo_logs: dict[str, str]


def serve_and_join(
    tmp_path: Path, config: Path, superlink: str, joins: dict[str, list[str]]
) -> Served:
    """`federated serve CONFIG`, and one `federated join --superlink SUPERLINK ARGS...` per
    entry of `joins`, each in a process group of its own (stopped when the coordinator
    ends)."""
    coordinator = subprocess.Popen(
        [*CLI, "--json", "federated", "serve", str(config)],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "serve.log").open("wb"),
        env=os.environ,
    )
    silos, logs = {}, {}
    for silo, args in joins.items():
        logs[silo] = tmp_path / f"join-{silo}.log"
        silos[silo] = subprocess.Popen(
            [*CLI, "federated", "join", "--superlink", superlink, *args],
            stdout=logs[silo].open("wb"),
            stderr=subprocess.STDOUT,
            env=os.environ,
            start_new_session=True,
        )
    try:
        out, _ = coordinator.communicate(timeout=900)
    finally:
        for process in silos.values():  # each silo's SuperNode and its app processes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in silos.values():
            process.wait(timeout=30)
        for log in [tmp_path / "serve.log", *logs.values()]:  # shown when the test fails
            print(f"== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
    return Served(
        json.loads(out),
        coordinator.returncode,
        {silo: process.returncode for silo, process in silos.items()},
        {silo: log.read_text(errors="replace") for silo, log in logs.items()},
    )
