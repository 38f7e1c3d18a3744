"""Distillation recipes (`method: distill`): the teacher, the student's shape, the loss mix and
the usual training keys.

    method: distill
    teacher_model: demo            # a registry reference (base, adapter, merged...) or a folder
    student: {num_layers: 2, hidden_size: 64, num_heads: 2, intermediate_size: 128}
    kd_temperature: 2.0            # softens both distributions in the KL term
    kd_alpha: 0.5                  # share of the KL term; 1 - kd_alpha is the hard-label loss
    datasets: [{path: data/skills/add/train.jsonl}]
    max_steps: 1000
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from finetune.full_training import FullTrainingKeys
from finetune.recipe import parse_keys


class StudentSpec(BaseModel):
    """The student's shape; a key left out keeps the teacher's value. The model type (Llama,
    ...) and the tokenizer are always the teacher's."""

    model_config = ConfigDict(extra="forbid")

    init: Literal["random", "teacher"] = Field(
        "random",
        description="random: fresh weights; teacher: the teacher's embeddings, head and "
        "evenly spaced layers (the widths must then be the teacher's).",
    )
    num_layers: int | None = Field(None, gt=0, description="Decoder layers.")
    hidden_size: int | None = Field(None, gt=0, description="Model width.")
    num_heads: int | None = Field(None, gt=0, description="Attention heads.")
    num_kv_heads: int | None = Field(
        None, gt=0, description="Key/value heads (grouped-query attention); default num_heads."
    )
    intermediate_size: int | None = Field(None, gt=0, description="MLP width.")
    max_position_embeddings: int | None = Field(
        None,
        gt=0,
        description="Longest sequence (prompt and answer) the student serves; an export stores "
        "position tables of this length.",
    )

    @model_validator(mode="after")
    def _whole_heads(self) -> "StudentSpec":
        if self.hidden_size and self.num_heads and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.num_heads and self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        return self


class TrafficPrompts(BaseModel):
    """Prompts from the gateway's traffic log, answered by the teacher to train on."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Requests made to this model name (as clients sent it).")
    limit: int = Field(1000, gt=0, le=100_000, description="The newest this many chat requests.")
    max_new_tokens: int = Field(64, gt=0, le=4096, description="Longest teacher answer.")


class DistillRecipe(FullTrainingKeys):
    method: Literal["distill"] = Field(description="Selects this recipe type.")
    teacher_model: str = Field(
        description="Registry reference (demo, demo@staging, demo-rev:2; an adapter is merged "
        "into its base in memory) or a Hugging Face model directory."
    )
    student: StudentSpec = Field(description="The student's shape and initial weights.")
    kd_temperature: float = Field(
        2.0, gt=0, le=100, description="Temperature of the KL term (its loss is scaled by T^2)."
    )
    kd_alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of the KL term; 1 - kd_alpha weighs the hard labels."
    )
    traffic: TrafficPrompts | None = Field(
        None, description="Also train on prompts from the traffic log, answered by the teacher."
    )

    @property
    def base_model(self) -> str:
        return self.teacher_model


def parse_distill_recipe(data: dict[str, Any], source: str = "recipe") -> DistillRecipe:
    return parse_keys(DistillRecipe, data, source)
