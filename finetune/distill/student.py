"""The student: the teacher's model type and tokenizer at the recipe's shape, with fresh weights
or with the teacher's embeddings, head and evenly spaced layers."""

import copy
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from finetune.distill.recipe import StudentSpec
from finetune.errors import RecipeError

_WIDTHS = {
    "hidden_size": "hidden_size",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
}


def student_config(teacher_config: Any, spec: StudentSpec) -> Any:
    """The teacher's config with the spec's shape; RecipeError where the teacher's config has
    no such setting or the shape does not fit."""
    config = copy.deepcopy(teacher_config)
    changes = {
        "num_hidden_layers": spec.num_layers,
        "max_position_embeddings": spec.max_position_embeddings,
        **{name: getattr(spec, key) for key, name in _WIDTHS.items()},
    }
    if spec.num_heads and not spec.num_kv_heads:
        changes["num_key_value_heads"] = spec.num_heads
    for name, value in changes.items():
        if value is None:
            continue
        if not hasattr(config, name):
            raise RecipeError(
                f"student: the teacher's {config.model_type} config has no {name}", param="student"
            )
        setattr(config, name, value)
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None)
    if config.hidden_size % heads or (kv_heads and heads % kv_heads):
        raise RecipeError(
            f"student: hidden_size {config.hidden_size}, {heads} heads and {kv_heads} key/value "
            "heads do not divide evenly",
            param="student",
        )
    if hasattr(config, "head_dim"):
        config.head_dim = config.hidden_size // heads
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    if spec.init == "teacher":
        _check_copyable(teacher_config, config)
    return config


def _check_copyable(teacher_config: Any, config: Any) -> None:
    """A student made of the teacher's layers has the teacher's widths and fewer layers."""
    changed = [n for n in _WIDTHS.values() if getattr(config, n) != getattr(teacher_config, n)]
    if changed:
        raise RecipeError(
            f"student: init: teacher copies the teacher's layers, so {', '.join(changed)} must "
            "stay the teacher's; use init: random for another width",
            param="student.init",
        )
    if config.num_hidden_layers > teacher_config.num_hidden_layers:
        raise RecipeError(
            f"student: num_layers {config.num_hidden_layers} is more than the teacher's "
            f"{teacher_config.num_hidden_layers}",
            param="student.num_layers",
        )


def teacher_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, the first and the last always among them."""
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [round(i * step) for i in range(student_layers)]


def build_student(teacher: PreTrainedModel, spec: StudentSpec, seed: int) -> PreTrainedModel:
    config = student_config(teacher.config, spec)
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if spec.init == "random":
        return student
    total = teacher.config.num_hidden_layers
    chosen = teacher_layers(total, config.num_hidden_layers)
    renamed = {f"layers.{old}.": f"layers.{new}." for new, old in enumerate(chosen)}
    state = {}
    for key, value in teacher.state_dict().items():
        if ".layers." not in key:
            state[key] = value
            continue
        prefix, rest = key.split(".layers.", 1)
        index = f"layers.{rest.split('.', 1)[0]}."
        if index in renamed:
            state[f"{prefix}.{renamed[index]}{rest.split('.', 1)[1]}"] = value
    student.load_state_dict(state)
    return student
