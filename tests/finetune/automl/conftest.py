from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import StackSettings
from registry.service import open_registry


@pytest.fixture
def home(tmp_path: Path, base_model_dir: Path) -> Path:
    """A stack home whose registry holds the tiny base model as `demo`."""
    home = tmp_path / "home"
    registry = open_registry(StackSettings(home=home, actor="tests"))
    registry.register("demo", base_model_dir)
    registry.set_alias("demo", "production", 1)
    return home


def search_data(skills_dir: Path, **keys: Any) -> dict[str, Any]:
    """A small LoRA search on the `reverse` skill: steps of 8 rows, scored on 16 rows."""
    return {
        "kind": "lora",
        "study": "tiny",
        "recipe": {
            "base_model": "demo",
            "datasets": [
                {"path": str(skills_dir / "reverse" / "train.jsonl")},
                {"path": str(skills_dir / "reverse" / "eval.jsonl"), "split": "validation"},
            ],
            "sequence_len": 64,
            "micro_batch_size": 8,
            "max_steps": 6,
            "save_steps": 2,
            "eval_steps": 100,
            "learning_rate": 1e-3,
            "lora_target_modules": ["q_proj", "v_proj"],
            "warmup_ratio": 0.0,
        },
        "space": {"learning_rate": {"low": 1e-6, "high": 2e-2, "log": True}},
        "trials": 2,
        "objectives": ["eval_loss"],
        "evaluation": {"every_steps": 2, "max_rows": 16, "max_new_tokens": 8},
        **keys,
    }


def write_search(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path
