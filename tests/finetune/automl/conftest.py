from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from core.settings import StackSettings
from registry.service import open_registry


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread here and in workers: on a shared, loaded machine two threads per
    process spin against each other and a tiny model's step takes 50x longer."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def home(tmp_path: Path, base_model_dir: Path) -> Path:
    """A stack home whose registry holds the tiny base model as `demo`."""
    home = tmp_path / "home"
    registry = open_registry(StackSettings(home=home, actor="tests"))
    registry.register("demo", base_model_dir)
    registry.set_alias("demo", "production", 1)
    return home


def search_data(skills_dir: Path, **keys: Any) -> dict[str, Any]:
    """A small LoRA search on the `reverse` skill: steps of 4 rows, scored on 8 rows."""
    validation = skills_dir / "reverse" / "eval-8.jsonl"
    lines = (skills_dir / "reverse" / "eval.jsonl").read_text().splitlines(keepends=True)
    validation.write_text("".join(lines[:8]))
    return {
        "kind": "lora",
        "study": "tiny",
        "recipe": {
            "base_model": "demo",
            "datasets": [
                {"path": str(skills_dir / "reverse" / "train.jsonl")},
                {"path": str(validation), "split": "validation"},
            ],
            "sequence_len": 64,
            "micro_batch_size": 4,
            "max_steps": 4,
            "save_steps": 2,
            "eval_steps": 100,
            "learning_rate": 1e-3,
            "lora_target_modules": ["q_proj", "v_proj"],
            "warmup_ratio": 0.0,
        },
        "space": {"learning_rate": {"low": 1e-6, "high": 2e-2, "log": True}},
        "trials": 2,
        "objectives": ["eval_loss"],
        "evaluation": {"every_steps": 2, "max_rows": 8, "max_new_tokens": 8},
        **keys,
    }


def write_search(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path
