"""Full-weight training of a whole model (a distilled student, a pruned model's recovery), on
the same transformers `Trainer`, data pipeline and training keys as the LoRA jobs; the result
is a plain Hugging Face safetensors folder with the tokenizer beside it."""

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from transformers import PreTrainedModel, Trainer, TrainerCallback

from core.configs import validation_message
from core.digests import bytes_digest
from finetune.data import Collator, Example
from finetune.errors import RecipeError
from finetune.loss_curve import plot_loss_curve
from finetune.recipe import DatasetSpec
from finetune.registration import JOB_TAG
from finetune.trainer import _Throughput, training_arguments
from registry.entities import ModelVersion, VersionFormat, VersionKind
from registry.errors import RegistryError
from registry.service import Registry

M = TypeVar("M", bound="TrainingKeys")


class TrainingKeys(BaseModel):
    """The training keys of a full-weight job, named as in the LoRA recipe (axolotl names)."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[DatasetSpec] = Field(min_length=1, description="Training (and validation) data.")
    sequence_len: int = Field(512, gt=0, description="Longer rows are reported, not truncated.")
    micro_batch_size: int = Field(8, gt=0, description="Rows per device per step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per update.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")
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
    seed: int = Field(0, description="Seeds the data order and any fresh weights.")
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
    num_processes: int | None = Field(
        None, gt=0, le=1, description="Full-weight jobs train in one process."
    )

    @model_validator(mode="after")
    def _steps(self) -> "TrainingKeys":
        if self.num_epochs is None and self.max_steps is None:
            raise ValueError("set num_epochs or max_steps")
        return self


def parse_keys(model: type[M], data: dict[str, Any], source: str) -> M:
    """`data` validated as `model`; RecipeError names the first wrong key (and the nearest
    valid one for a misspelt key)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of keys to values")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RecipeError(f"{source}: {validation_message(err, model)}") from None


def recipe_digest(recipe: BaseModel) -> str:
    return bytes_digest(json.dumps(recipe.model_dump(mode="json"), sort_keys=True).encode())


def num_parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def train_full(
    model: PreTrainedModel,
    tokenizer: Any,
    keys: TrainingKeys,
    job_dir: Path,
    train_rows: Sequence[Example],
    eval_rows: Sequence[Example],
    *,
    trainer_class: type[Trainer] = Trainer,
    trainer_options: dict[str, Any] | None = None,
    resume_from: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    progress: bool = True,
) -> tuple[Path, dict[str, float]]:
    """Train every weight of `model`; saves it with `tokenizer` to `<job_dir>/model` and
    returns that folder and the metrics (train/eval loss, tokens, steps)."""
    model.config.use_cache = False
    throughput = _Throughput()
    args = training_arguments(
        keys,  # type: ignore[arg-type]  # the same keys as a LoRA recipe's
        job_dir,
        bool(eval_rows),
        disable_tqdm=not progress,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=list(train_rows),
        eval_dataset=list(eval_rows) or None,
        data_collator=Collator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[throughput, *callbacks],
        **(trainer_options or {}),
    )
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics: dict[str, float] = {"train_loss": output.training_loss}
    if eval_rows:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    metrics["train_tokens"] = float(trainer.state.num_input_tokens_seen)
    metrics["train_tokens_per_second"] = throughput.tokens_per_second
    metrics["steps"] = float(output.global_step)
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    model_dir = job_dir / "model"
    model.config.use_cache = True
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    history = trainer.state.log_history
    (job_dir / "log_history.json").write_text(json.dumps(history, indent=1))
    plot_loss_curve(history, job_dir / "loss_curve.png")
    (job_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return model_dir, metrics


def register_once(
    registry: Registry,
    name: str,
    model_dir: Path,
    *,
    kind: VersionKind,
    job_id: str,
    set_staging_alias: bool,
    **fields: Any,
) -> ModelVersion:
    """Register job `job_id`'s model once: a job that registered before its worker died gets
    the version it registered back."""

    def registered() -> ModelVersion | None:
        found = registry.list_versions(
            kind=kind, tags={JOB_TAG: job_id}, include_archived=True, limit=1
        )
        return found[0] if found else None

    if (existing := registered()) is not None:
        return existing
    fields["tags"] = {**fields.get("tags", {}), JOB_TAG: job_id}
    try:
        version = registry.register(
            name, model_dir, kind=kind, format=VersionFormat.HF_SAFETENSORS, **fields
        )
    except RegistryError:
        if (found := registered()) is None:
            raise
        return found
    if set_staging_alias:
        registry.set_alias(name, "staging", version.version, reason=f"job {job_id} succeeded")
    return version
