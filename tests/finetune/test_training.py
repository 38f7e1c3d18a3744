import json
import shutil
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from core.settings import StackSettings
from finetune.errors import RecipeError
from finetune.merge import merge_adapter
from finetune.recipe import Recipe, parse_recipe
from finetune.trainer import load_model, train
from registry.entities import VersionKind
from registry.errors import RegistryError
from registry.service import open_registry


def recipe_for(base: Path | str, skills_dir: Path, **keys: Any) -> Recipe:
    data = {
        "base_model": str(base),
        "datasets": [
            {"path": str(skills_dir / "reverse" / "train.jsonl")},
            {"path": str(skills_dir / "reverse" / "eval.jsonl"), "split": "validation"},
        ],
        "sequence_len": 64,
        "micro_batch_size": 8,
        "max_steps": 4,
        "save_steps": 2,
        "eval_steps": 2,
        "learning_rate": 1e-3,
        **keys,
    }
    return parse_recipe(data)


def test_lora_run_writes_adapter_checkpoints_and_loss_curve(
    base_model_dir: Path, skills_dir: Path, tmp_path: Path
) -> None:
    result = train(
        recipe_for(base_model_dir, skills_dir),
        tmp_path / "job",
        registry=None,
        progress=False,
    )
    adapter = tmp_path / "job" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_model_dir)
    assert (tmp_path / "job" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (adapter / "loss_curve.png").is_file()
    assert sorted(p.name for p in (tmp_path / "job" / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    assert result.metrics["steps"] == 4
    assert result.metrics["train_tokens"] > 0 and result.metrics["eval_loss"] > 0
    assert [e["step"] for e in result.log_history if "eval_loss" in e] == [2, 4]
    assert len(result.dataset_digests) == 2


class _StopAt(TrainerCallback):
    """Ends training after `step`, as a killed worker would after its checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_continues_the_same_run_from_its_checkpoint(
    base_model_dir: Path, skills_dir: Path, tmp_path: Path
) -> None:
    """Resumed at step 2, a run's later steps see the same learning rate and loss as an
    uninterrupted run: the optimizer, scheduler, data order and random state continue."""
    recipe = recipe_for(base_model_dir, skills_dir, max_steps=4)

    def logged(result: Any) -> dict[int, tuple[float, float]]:
        return {
            e["step"]: (e["loss"], e["learning_rate"]) for e in result.log_history if "loss" in e
        }

    whole = logged(train(recipe, tmp_path / "whole", registry=None, progress=False))
    job_dir = tmp_path / "job"
    train(recipe, job_dir, registry=None, callbacks=[_StopAt(2)], progress=False)
    assert sorted(p.name for p in (job_dir / "checkpoints").iterdir()) == ["checkpoint-2"]
    checkpoint = job_dir / "checkpoints" / "checkpoint-2"
    result = train(recipe, job_dir, registry=None, resume_from=checkpoint, progress=False)
    resumed = logged(result)
    assert result.resumed_from == str(checkpoint) and result.metrics["steps"] == 4
    assert resumed[4] == pytest.approx(whole[4], rel=1e-5)
    assert resumed[4] != pytest.approx(whole[2], rel=1e-3)  # step 4, not step 2 again


def test_qlora_trains_on_nf4_weights_on_the_cpu(
    base_model_dir: Path, skills_dir: Path, tmp_path: Path
) -> None:
    recipe = recipe_for(base_model_dir, skills_dir, adapter="qlora", max_steps=2)
    assert recipe.load_in_4bit
    model = load_model(base_model_dir, recipe)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.quant_type == "nf4" for m in quantized)
    result = train(recipe, tmp_path / "job", registry=None, progress=False)
    assert result.metrics["steps"] == 2
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))


def test_adapter_on_a_registry_base_merges_into_a_full_model(
    base_model_dir: Path, skills_dir: Path, tmp_path: Path
) -> None:
    registry = open_registry(StackSettings(home=tmp_path / "home", actor="tests"))
    base = registry.register("demo", base_model_dir)
    result = train(
        recipe_for("demo:1", skills_dir, lora_dropout=0.0),
        tmp_path / "job",
        registry=registry,
        progress=False,
    )
    assert result.base.version == base
    adapter = registry.register(
        "demo-ft", result.adapter_dir, kind="adapter", format="peft-lora", parent="demo:1"
    )
    merged = merge_adapter(registry, adapter.ref)
    assert (merged.kind, merged.parent) == (VersionKind.MERGED, "demo-ft:1")

    ids = torch.tensor([[1, 40, 41, 42, 43]])
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_model_dir), result.adapter_dir
    ).eval()
    full = AutoModelForCausalLM.from_pretrained(registry.local_copy(merged)).eval()
    with torch.no_grad():
        torch.testing.assert_close(full(ids).logits, peft(ids).logits, atol=1e-4, rtol=1e-4)

    with pytest.raises(RegistryError, match="merge takes an adapter version"):
        merge_adapter(registry, "demo:1")
    with pytest.raises(RecipeError, match="is an adapter; train on its base"):
        train(recipe_for("demo-ft:1", skills_dir), tmp_path / "j2", registry=registry)


@pytest.mark.parametrize("adapter", ["lora", "qlora"])
def test_training_loads_safetensors_weights_only(
    base_model_dir: Path, skills_dir: Path, tmp_path: Path, adapter: str
) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(base_model_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(OSError, match="safetensors"):
        load_model(pickled, recipe_for(pickled, skills_dir, adapter=adapter))
