"""Full-weight training of a whole model (a distilled student, a pruned model's recovery), on
the same transformers `Trainer`, data pipeline and training keys as the LoRA jobs; the result
is a plain Hugging Face safetensors folder with the tokenizer beside it."""

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field
from transformers import PreTrainedModel, Trainer, TrainerCallback

from finetune.data import Example
from finetune.loss_curve import plot_loss_curve
from finetune.recipe import TrainingKeys
from finetune.registration import JOB_TAG
from finetune.trainer import run_trainer
from registry.entities import ModelVersion, VersionFormat, VersionKind
from registry.errors import RegistryError
from registry.service import Registry


class FullTrainingKeys(TrainingKeys):
    """The training keys of a full-weight job, which trains in one process."""

    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")
    num_processes: int | None = Field(
        None, gt=0, le=1, description="Full-weight jobs train in one process."
    )


def num_parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def train_full(
    model: PreTrainedModel,
    tokenizer: Any,
    keys: FullTrainingKeys,
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
    trainer, metrics = run_trainer(
        model,
        tokenizer,
        keys,
        job_dir,
        train_rows,
        eval_rows,
        trainer_class=trainer_class,
        trainer_options=trainer_options,
        resume_from=resume_from,
        callbacks=callbacks,
        progress=progress,
    )
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
