from pathlib import Path
from typing import Any

import pytest
import yaml

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
