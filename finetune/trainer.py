"""One LoRA / QLoRA training run: a recipe in, an adapter folder with its metrics out.

transformers `Trainer` with PEFT. Checkpoints go to `<job dir>/checkpoints`, the adapter to
`<job dir>/adapter` (with the loss curve and the log history), so a killed run resumes from
its last checkpoint."""

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from core.digests import file_digest
from finetune.clean import clean_dataset, prompt_text
from finetune.data import Collator, DataError, Example, Packed, encode_rows, pack, read_rows
from finetune.errors import RecipeError
from finetune.loss_curve import plot_loss_curve
from finetune.recipe import Recipe, TrainingKeys
from registry.entities import ModelVersion, VersionKind
from registry.service import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseModel:
    """The model a recipe trains on: a local folder, and its registry version if it has one."""

    path: Path
    version: ModelVersion | None

    @property
    def reference(self) -> str:
        return self.version.ref if self.version else str(self.path)


@dataclass
class TrainResult:
    adapter_dir: Path
    base: BaseModel
    metrics: dict[str, float]
    dataset_digests: list[str]
    resumed_from: str | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)


def resolve_base(reference: str, registry: Registry | None) -> BaseModel:
    """A Hugging Face folder as it is, or a registry reference fetched (verified) into the
    models cache."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return BaseModel(path.resolve(), None)
    if registry is None:
        raise RecipeError(f"base_model {reference!r} is not a folder", param="base_model")
    version = registry.resolve(reference)
    if version.kind is VersionKind.ADAPTER:
        raise RecipeError(
            f"base_model {version.ref} is an adapter; train on its base ({version.parent}) or "
            "on a merged version",
            param="base_model",
        )
    return BaseModel(registry.local_copy(version), version)


def load_training_data(
    recipe: TrainingKeys, tokenizer: Any, job_dir: Path
) -> tuple[list[Example], list[Example], list[str]]:
    """(train, validation, dataset digests) for the recipe's datasets. With `clean`, training
    rows are cleaned against the validation rows, each file's report written to `job_dir`."""
    train: list[Example] = []
    validation: list[Example] = []
    digests = []
    held_out = {
        number: read_rows(Path(spec.path).expanduser(), spec.type)
        for number, spec in enumerate(recipe.datasets)
        if spec.split == "validation"
    }
    against = [prompt_text(row) for rows in held_out.values() for _, row in rows]
    for number, spec in enumerate(recipe.datasets):
        path = Path(spec.path).expanduser()
        if number in held_out:
            validation.extend(
                encode_rows(tokenizer, held_out[number], spec.type, recipe.sequence_len)
            )
        elif recipe.clean:
            report = job_dir / f"clean-{number}-{path.stem}.report.json"
            train.extend(_cleaned_examples(path, spec.type, recipe, tokenizer, against, report))
        else:
            rows = read_rows(path, spec.type)
            train.extend(encode_rows(tokenizer, rows, spec.type, recipe.sequence_len))
        digests.append(file_digest(path))
    if not train:
        raise RecipeError("datasets: none has split: train; add one to train on", param="datasets")
    return train, validation, digests


def _cleaned_examples(
    path: Path,
    kind: str,
    recipe: TrainingKeys,
    tokenizer: Any,
    against: list[str],
    report_path: Path,
) -> list[Example]:
    """A training file's cleaned rows, tokenized; rows over `sequence_len` are removed too."""
    rows, report = clean_dataset(path, kind, against)
    examples = []
    for example in encode_rows(tokenizer, rows, kind):
        if len(example) > recipe.sequence_len:
            report.remove("over sequence_len", f"{example.line}: {len(example)} tokens")
        else:
            examples.append(example)
    report.kept = len(examples)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps({"data": str(path), **report.summary()}, indent=2))
    if not examples:
        raise DataError([f"{path.name}: no rows left after cleaning (see {report_path})"])
    return examples


def load_model(path: Path, recipe: Recipe) -> PreTrainedModel:
    """The base model with fresh LoRA layers (on NF4 weights for qlora)."""
    if recipe.load_in_4bit:
        compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quantization, dtype=compute, use_safetensors=True
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, use_safetensors=True
        )
    # Without a KV cache, `position_ids` that restart mark packed examples, and attention
    # stays within each one; with the cache transformers ignores them and attends across.
    model.config.use_cache = False
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=recipe.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def training_arguments(recipe: TrainingKeys, job_dir: Path, has_eval: bool, **extra: Any) -> Any:
    eval_steps = recipe.eval_steps if has_eval else None
    return TrainingArguments(
        output_dir=str(job_dir / "checkpoints"),
        per_device_train_batch_size=recipe.micro_batch_size,
        per_device_eval_batch_size=recipe.micro_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler,
        warmup_steps=recipe.warmup_ratio,
        num_train_epochs=recipe.num_epochs or 1.0,
        max_steps=recipe.max_steps or -1,
        eval_strategy="steps" if eval_steps else ("epoch" if has_eval else "no"),
        eval_steps=eval_steps,
        save_strategy="steps" if recipe.save_steps else "epoch",
        save_steps=recipe.save_steps or 500,
        save_total_limit=2,
        logging_steps=max(1, min(recipe.eval_steps or 10, 10)),
        logging_first_step=True,
        seed=recipe.seed,
        data_seed=recipe.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        **extra,
    )


class _Throughput(TrainerCallback):
    """Real (unpadded) tokens trained on per second in this process, resumed runs included."""

    def __init__(self) -> None:
        self.tokens_per_second = math.nan
        self._start = (0.0, 0)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = (time.monotonic(), state.num_input_tokens_seen)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        seconds = time.monotonic() - self._start[0]
        self.tokens_per_second = (state.num_input_tokens_seen - self._start[1]) / seconds


def run_trainer(
    model: PreTrainedModel,
    tokenizer: Any,
    keys: TrainingKeys,
    job_dir: Path,
    train_data: Sequence[Example | Packed],
    eval_rows: Sequence[Example],
    *,
    trainer_class: type[Trainer] = Trainer,
    trainer_options: dict[str, Any] | None = None,
    resume_from: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    progress: bool = True,
) -> tuple[Trainer, dict[str, float]]:
    """Train `model` with transformers' Trainer (or `trainer_class`) as `keys` say; returns
    the trainer and the metrics: train and eval loss, tokens, tokens per second, steps."""
    throughput = _Throughput()
    args = training_arguments(
        keys,
        job_dir,
        bool(eval_rows),
        disable_tqdm=not progress,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=list(train_data),
        eval_dataset=list(eval_rows) or None,
        data_collator=Collator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[throughput, *callbacks],
        **(trainer_options or {}),
    )
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics: dict[str, float] = {"train_loss": output.training_loss}
    if eval_rows:
        evaluated = [e for e in trainer.state.log_history if "eval_loss" in e]
        final = evaluated[-1] if evaluated and evaluated[-1]["step"] == output.global_step else None
        metrics["eval_loss"] = (final or trainer.evaluate())["eval_loss"]
    metrics["train_tokens"] = float(trainer.state.num_input_tokens_seen)
    metrics["train_tokens_per_second"] = throughput.tokens_per_second
    metrics["steps"] = float(output.global_step)
    return trainer, metrics


def train(
    recipe: Recipe,
    job_dir: Path,
    *,
    registry: Registry | None,
    resume_from: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    progress: bool = True,
) -> TrainResult:
    """Run the recipe in `job_dir`; with `resume_from`, continue from that checkpoint."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_base(recipe.base_model, registry)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows, eval_rows, digests = load_training_data(recipe, tokenizer, job_dir)
    train_data: Sequence[Example | Packed] = (
        pack(train_rows, recipe.sequence_len) if recipe.sample_packing else train_rows
    )
    torch.manual_seed(recipe.seed)
    model = load_model(base.path, recipe)
    checkpoint = str(resume_from) if resume_from else None
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    trainer, metrics = run_trainer(
        model,
        tokenizer,
        recipe,
        job_dir,
        train_data,
        eval_rows,
        resume_from=resume_from,
        callbacks=callbacks,
        progress=progress,
    )
    adapter_dir = job_dir / "adapter"
    if not trainer.is_world_process_zero():
        return TrainResult(adapter_dir, base, metrics, digests, checkpoint)
    model.save_pretrained(adapter_dir)
    _point_adapter_at(adapter_dir, base.reference)
    history = trainer.state.log_history
    (adapter_dir / "log_history.json").write_text(json.dumps(history, indent=1))
    plot_loss_curve(history, job_dir / "loss_curve.png")
    shutil.copyfile(job_dir / "loss_curve.png", adapter_dir / "loss_curve.png")
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    (job_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return TrainResult(adapter_dir, base, metrics, digests, checkpoint, history)


def _point_adapter_at(adapter_dir: Path, base_reference: str) -> None:
    """Record the base as its registry reference, not this machine's cache path."""
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_reference
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
