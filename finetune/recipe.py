"""Fine-tuning recipes: YAML files in `configs/finetune/`, validated into a typed `Recipe`.

Keys follow axolotl / LLaMA-Factory names. An unknown key is an error that suggests the
nearest valid name."""

import importlib.util
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.configs import validation_message
from core.digests import bytes_digest
from finetune.errors import RecipeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


K = TypeVar("K", bound=_Strict)


class DatasetSpec(_Strict):
    path: str = Field(description="JSONL file (or a directory of them) to train on.")
    type: Literal["chat", "alpaca", "text"] = Field(
        "chat",
        description="chat: OpenAI `messages` rows; alpaca: instruction/input/output; "
        "text: raw `text` rows.",
    )
    split: Literal["train", "validation"] = Field("train", description="What the rows are for.")


class TrainingKeys(_Strict):
    """The keys every training job shares: its data, batches, schedule, checkpoints, and how
    its result is named."""

    datasets: list[DatasetSpec] = Field(min_length=1, description="Training (and validation) data.")
    sequence_len: int = Field(512, gt=0, description="Longer rows are reported, not truncated.")
    micro_batch_size: int = Field(8, gt=0, description="Rows per device per step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per update.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="transformers scheduler name."
    )
    warmup_ratio: float = Field(
        0.03, ge=0.0, lt=1.0, description="Share of steps spent warming up."
    )
    num_epochs: float | None = Field(None, gt=0, description="Passes over the data (or max_steps).")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps (overrides num_epochs).")
    eval_steps: int | None = Field(None, gt=0, description="Steps between evaluations.")
    save_steps: int | None = Field(None, gt=0, description="Steps between checkpoints.")
    seed: int = Field(0, description="Seeds data order, fresh weights and dropout.")
    clean: bool = Field(
        False,
        description="Clean the training datasets first, as `llm-finetune clean` does: drop "
        "malformed, too long, duplicate and near-duplicate rows and rows that overlap the "
        "validation datasets, and mask personal data; the report goes to the job folder.",
    )
    output_dir: str | None = Field(None, description="Job folder; default under LLMOPS_HOME/jobs.")
    suffix: str | None = Field(
        None,
        max_length=40,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Names the result: registered as <source model>-<suffix>.",
    )
    register_as: str | None = Field(None, description="Registry model name of the result.")
    set_staging_alias: bool = Field(
        False, description="Point the registered model's `staging` alias at the new version."
    )

    @model_validator(mode="after")
    def _steps(self) -> "TrainingKeys":
        if self.num_epochs is None and self.max_steps is None:
            raise ValueError("set num_epochs or max_steps")
        return self


class Recipe(TrainingKeys):
    """A LoRA / QLoRA fine-tune."""

    base_model: str = Field(
        description="Registry reference (demo, demo@staging, demo:1) or a "
        "Hugging Face model directory."
    )
    adapter: Literal["lora", "qlora"] = Field(
        "lora", description="qlora: LoRA on 4-bit NF4 weights."
    )
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear."
    )
    load_in_4bit: bool = Field(False, description="Load the base in bitsandbytes NF4 (qlora).")
    sample_packing: bool = Field(False, description="Pack several rows into one sequence.")
    num_processes: int | None = Field(
        None,
        gt=0,
        le=1024,
        description="Data-parallel training processes: one per GPU by default. On a machine "
        "without GPUs 1, or as many CPU processes as given (DDP over gloo).",
    )
    distributed: Literal["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"] = Field(
        "ddp",
        description="How several GPUs share a job (accelerate launch with "
        "configs/accelerate/<name>.yaml); unused on one device.",
    )
    suffix: str | None = Field(
        None,
        max_length=40,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Names the result: ft:<base>:<suffix>:<job-id>, registered as <base>-<suffix>.",
    )
    register_as: str | None = Field(
        None, description="Registry model name of the adapter (default <base>-<suffix or ft>)."
    )

    @model_validator(mode="after")
    def _quantized(self) -> "Recipe":
        if self.adapter == "qlora":
            self.load_in_4bit = True
        elif self.load_in_4bit:
            raise ValueError("load_in_4bit needs adapter: qlora")
        return self

    @model_validator(mode="after")
    def _deepspeed_installed(self) -> "Recipe":
        if (
            self.distributed.startswith("deepspeed")
            and importlib.util.find_spec("deepspeed") is None
        ):
            raise ValueError(
                f"distributed: {self.distributed} needs the deepspeed package; install it with "
                "pip install 'llmops-stack[deepspeed]', or use ddp or fsdp"
            )
        return self


def parse_keys(model: type[K], data: Any, source: str) -> K:
    """`data` validated as `model`; RecipeError names the first wrong key (and the nearest
    valid one for a misspelt key)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of keys to values")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RecipeError(f"{source}: {validation_message(err, model)}") from None


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    return parse_keys(Recipe, data, source)


def recipe_digest(recipe: BaseModel) -> str:
    return bytes_digest(json.dumps(recipe.model_dump(mode="json"), sort_keys=True).encode())


def load_recipe(path: Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a YAML recipe; `overrides` (from command-line flags) replace its keys."""
    return parse_recipe(read_recipe_data(path, overrides), str(path))


def read_recipe_data(path: Path, overrides: dict[str, Any] | None = None) -> Any:
    """A YAML recipe file's data, with `overrides` replacing its keys; not yet validated."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from None
    if isinstance(data, dict):
        data = {**data, **(overrides or {})}
    return data
