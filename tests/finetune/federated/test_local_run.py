"""A local federation on Flower's deployment runtime: a SuperLink, one SuperNode per silo
(separate processes), rounds, a silo killed mid-round that rejoins, the result registered
with its lineage and served by the gateway."""

import json
import os
import signal
import threading
from pathlib import Path

import openai
import pytest

from core.settings import StackSettings
from finetune.cli import main
from finetune.jobs import JobStatus, JobStore
from registry.entities import VersionKind
from tests.finetune.federated.conftest import children_named, tiny_config, write_config
from tests.serving.conftest import running_gateway


def _kill_silo_mid_round(home: Path, silo: str, done: threading.Event) -> None:
    """SIGKILL silo's SuperNode (and its ClientApp) once it started training round 1."""
    started = home / "federated" / "silos" / silo / "round-1"
    while not started.exists():
        assert not done.wait(0.2), "silo never started round 1"
    for pid in children_named(os.getpid(), "flower-supernode", f'silo-id="{silo}"'):
        os.killpg(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_federation_survives_a_dead_silo_and_its_adapter_is_served(
    tmp_path: Path, home: Path, base_model_dir: Path, silo_dirs: dict[str, Path], capsys
) -> None:
    config = write_config(tmp_path / "fed.yaml", tiny_config(silo_dirs, rounds=2))
    with running_gateway(home, base_model_dir) as gateway:
        done = threading.Event()
        killer = threading.Thread(target=_kill_silo_mid_round, args=(home, "c", done))
        killer.start()
        try:
            code = main(["--json", "federated", "run", str(config)])
        finally:
            done.set()
            killer.join()
        summary = json.loads(capsys.readouterr().out)
        assert code == 0, summary["error"]

        version = gateway.registry.resolve(summary["registered_version"])
        assert version.kind is VersionKind.ADAPTER and version.parent == "demo:1"
        lineage = json.loads((gateway.registry.local_copy(version) / "federation.json").read_text())
        first, second = lineage["per_round"]
        assert sorted(first["silos"]) == ["a", "b"]  # c died mid-round 1 ...
        assert sorted(second["silos"]) == ["a", "b", "c"]  # ... and rejoined for round 2
        assert [s["silo_id"] for s in lineage["silos"]] == ["a", "b", "c"]
        assert all(s["data_digest"].startswith("sha256:") for s in lineage["silos"])
        assert lineage["base"] == "demo:1" and lineage["strategy"]["name"] == "fedavg"
        assert lineage["privacy"]["differential_privacy"]["enabled"] is False
        assert second["bytes_received"] * 20 < lineage["full_model_bytes"] * 3
        assert (gateway.registry.local_copy(version) / "round_curve.png").read_bytes()[:4] == (
            b"\x89PNG"
        )

        job = JobStore.open(StackSettings().resolved_database_url).get(summary["id"])
        assert job.kind == "federated" and job.status is JobStatus.SUCCEEDED
        assert main(["federated", "run", "--help"]) == 0
        capsys.readouterr()
        assert main(["show", job.id]) == 0
        shown = capsys.readouterr().out
        assert "rounds completed: 2/2" in shown
        assert "Round 1/2: train loss=" in shown and "from 2 silos (a, b)" in shown
        assert "Round 2/2: train loss=" in shown and "The silo c SuperNode exited" in shown

        client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="none")
        reply = client.chat.completions.create(
            model=version.ref,
            messages=[{"role": "user", "content": "Reverse this word: cat"}],
            max_tokens=4,
        )
        assert reply.model == version.ref and reply.choices[0].message.content is not None
