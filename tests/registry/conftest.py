from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from core.settings import StackSettings
from registry.service import Registry, open_registry


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> StackSettings:
    return StackSettings(home=tmp_path / "home", database_url=database_url, actor="tester")


@pytest.fixture
def registry(settings: StackSettings) -> Registry:
    return open_registry(settings)


def make_model_dir(path: Path, seed: int = 0) -> Path:
    """A small directory shaped like a Hugging Face model: config and safetensors weights."""
    path.mkdir(parents=True)
    weights = np.random.default_rng(seed).standard_normal((8, 4)).astype(np.float32)
    save_file({"lm_head.weight": weights}, str(path / "model.safetensors"))
    (path / "config.json").write_text(f'{{"model_type": "llama", "seed": {seed}}}')
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model-a", seed=0)


@pytest.fixture
def other_model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "model-b", seed=1)
