"""Pruning recipes (`method: prune`): what to remove from the model, then the training keys of
the short recovery fine-tune.

    method: prune
    base_model: demo
    pruning: {mlp_ratio: 0.5, heads_ratio: 0.5, drop_layers: [1]}
    datasets: [{path: data/skills/add/train.jsonl}]
    max_steps: 100                 # the recovery fine-tune
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from finetune.full_training import FullTrainingKeys
from finetune.recipe import parse_keys


class PruningSpec(BaseModel):
    """Structured pruning: the same share of MLP channels and of attention heads goes from
    every remaining layer, so the result is still one Hugging Face config."""

    model_config = ConfigDict(extra="forbid")

    mlp_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of each layer's MLP channels to remove."
    )
    heads_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of each layer's attention heads to remove."
    )
    drop_layers: list[int] = Field(
        default_factory=list, description="Indices of whole decoder layers to remove."
    )
    importance: Literal["l2", "l1"] = Field(
        "l2", description="Channels and heads with the smallest weight norm go first."
    )

    @model_validator(mode="after")
    def _something(self) -> "PruningSpec":
        if not (self.mlp_ratio or self.heads_ratio or self.drop_layers):
            raise ValueError("nothing to prune: set mlp_ratio, heads_ratio or drop_layers")
        if len(set(self.drop_layers)) != len(self.drop_layers):
            raise ValueError(f"drop_layers {self.drop_layers} names a layer twice")
        return self


class PruneRecipe(FullTrainingKeys):
    method: Literal["prune"] = Field(description="Selects this recipe type.")
    base_model: str = Field(
        description="Registry reference of the model to prune (an adapter is merged into its "
        "base first) or a Hugging Face model directory."
    )
    pruning: PruningSpec = Field(description="What to remove.")


def parse_prune_recipe(data: dict[str, Any], source: str = "recipe") -> PruneRecipe:
    return parse_keys(PruneRecipe, data, source)
