"""Loaders run a model's own code (transformers `auto_map`) only for models the registry's
operator allowed (LLMOPS_TRUST_REMOTE_CODE); for any other model, transformers' built-in
classes load it, and the code in the folder is never imported."""

import json
import shutil
from pathlib import Path

import pytest
import transformers.dynamic_module_utils as dynamic_modules

from core.settings import StackSettings
from finetune.source_model import resolve_source
from registry.service import open_registry
from registry.settings import RegistrySettings

CONFIG_CODE = """
from pathlib import Path
from transformers import LlamaConfig

Path(__file__).with_name("imported").write_text("yes")


class CustomConfig(LlamaConfig):
    pass
"""


@pytest.fixture
def remote_code_dir(tmp_path: Path, random_model_dir: Path) -> Path:
    folder = tmp_path / "custom"
    shutil.copytree(random_model_dir, folder)
    (folder / "configuration_custom.py").write_text(CONFIG_CODE)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_source_model_runs_its_code_only_where_the_operator_allowed_it(
    tmp_path: Path, remote_code_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modules = tmp_path / "hf-modules"  # where transformers copies the code it imports
    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(modules))
    monkeypatch.syspath_prepend(str(modules))
    stack = StackSettings(home=tmp_path / "home", actor="tester")
    allowing = open_registry(stack, RegistrySettings(trust_remote_code=["custom"]))
    allowing.register("custom", remote_code_dir)

    refusing = open_registry(stack, RegistrySettings(promotion_gate=None))
    config = resolve_source("custom:1", refusing, "teacher").config()
    assert type(config).__name__ == "LlamaConfig"
    assert not list(modules.rglob("imported"))

    config = resolve_source("custom:1", allowing, "teacher").config()
    assert type(config).__name__ == "CustomConfig"
    assert list(modules.rglob("imported"))
