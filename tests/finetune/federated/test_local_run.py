"""A local federation on Flower's deployment runtime: a SuperLink, one SuperNode per silo
(separate processes), rounds, a silo killed mid-round that rejoins, the result registered
with its lineage and served by the gateway, where it answers what the silos taught it."""

import json
import os
import signal
import threading
from pathlib import Path

import openai
import pytest

from core.settings import StackSettings
from finetune.cli import main
from finetune.demo.skills import NEW_LOOKUP, exact_match, make_row, write_jsonl
from finetune.federated.adapter import initial_adapter
from finetune.federated.config import LoraSettings
from finetune.jobs import JobStatus, JobStore
from registry.entities import VersionKind
from tests.finetune.federated.conftest import children_named, tiny_config, write_config
from tests.serving.conftest import running_gateway

# Questions about colours the untrained base never saw (one template, six items). Every silo
# holds them all, so that two short rounds teach them.
TAUGHT = [
    make_row(NEW_LOOKUP, (0, item))
    for item in ("brimble", "caskin", "dorvel", "elmish", "farrow", "glimber")
]


@pytest.fixture
def taught_silo_dirs(tmp_path: Path) -> dict[str, Path]:
    dirs = {silo: tmp_path / "silos" / silo for silo in ("a", "b", "c")}
    for folder in dirs.values():
        write_jsonl(folder / "train.jsonl", TAUGHT * 4)
    return dirs


def _taught_answers(client: openai.OpenAI, model: str) -> int:
    """How many taught questions `model` answers exactly (greedy), through the gateway."""
    right = 0
    for row in TAUGHT:
        question, answer = (m["content"] for m in row["messages"])
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=8,
            temperature=0,
        )
        assert reply.model == model
        right += exact_match(reply.choices[0].message.content or "", answer)
    return right


def _kill_silo_mid_round(home: Path, silo: str, done: threading.Event) -> None:
    """SIGKILL silo's SuperNode (and its ClientApp) once it started training round 1."""
    started = home / "federated" / "silos" / silo / "round-1"
    while not started.exists():
        assert not done.wait(0.2), "silo never started round 1"
    for pid in children_named(os.getpid(), "flower-supernode", f'silo-id="{silo}"'):
        os.killpg(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_federation_survives_a_dead_silo_and_its_adapter_is_served(
    tmp_path: Path, home: Path, base_model_dir: Path, taught_silo_dirs: dict[str, Path], capsys
) -> None:
    data = tiny_config(
        taught_silo_dirs,
        rounds=2,
        lora={"lora_r": 8, "lora_alpha": 16, "lora_target_modules": "all-linear"},
        training={"local_steps": 20, "micro_batch_size": 8, "learning_rate": 1.0e-2},
    )
    config = write_config(tmp_path / "fed.yaml", data)
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
        # Only adapter tensors travel: three silos' replies are three adapters and a few
        # numbers, less than half the model.
        lora = LoraSettings.model_validate(data["lora"])
        adapter_bytes = sum(a.nbytes for a in initial_adapter(base_model_dir, lora, 0))
        assert 3 * adapter_bytes <= second["bytes_received"] < 3 * adapter_bytes * 1.1
        assert second["bytes_received"] * 2 < lineage["full_model_bytes"]
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
        # The served adapter answers at least 5 of the 6 taught questions exactly; the
        # untrained base, none.
        right = _taught_answers(client, version.ref)
        assert right >= 5, f"{right} of {len(TAUGHT)} taught answers right"
        assert _taught_answers(client, "demo:1") == 0
