"""The federated adapter as tensors: built fresh on the base (the round-0 global adapter all
silos start from), and written back as a PEFT adapter folder at the end."""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from transformers import AutoModelForCausalLM

from finetune.federated.config import LoraSettings


def _lora_model(base_dir: Path, lora: LoraSettings, seed: int) -> PeftModel:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=lora.lora_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=lora.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def adapter_keys(state: Mapping[str, Any]) -> list[str]:
    """The names of the tensors that travel, in the order silos and coordinator use: the
    low-rank matrices. With embed_tokens or lm_head among the targets, PEFT's adapter state
    also holds those layers' full base weights, which LoRA training never changes."""
    return sorted(key for key in state if ".lora_" in key)


def initial_adapter(base_dir: Path, lora: LoraSettings, seed: int) -> list[np.ndarray]:
    """The adapter's tensors, as every silo starts round 0 from them."""
    state = get_peft_model_state_dict(_lora_model(base_dir, lora, seed))
    return [state[key].numpy().copy() for key in adapter_keys(state)]


def write_adapter(
    base_dir: Path, lora: LoraSettings, arrays: list[np.ndarray], out: Path, base_ref: str
) -> Path:
    """A PEFT adapter folder holding `arrays`, its base recorded as the registry reference."""
    model = _lora_model(base_dir, lora, 0)
    keys = adapter_keys(get_peft_model_state_dict(model))
    state = {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays, strict=True)}
    set_peft_model_state_dict(model, state)
    model.save_pretrained(out)
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_ref
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return out


def model_bytes(base_dir: Path) -> int:
    """Bytes of the base's weights: what sending the full model would cost."""
    return sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))
