"""The `tune-trial` job kind: one trial of a study. The worker asks the study for the trial's
values (or, resuming after its worker died, finds the trial it had), trains the recipe they
make (a LoRA adapter, or a distilled student), reports intermediate scores so the pruner can
stop it early, and tells the study the trial's objective values. Which result is registered is
the study's decision, after all its trials (see `finetune.automl.study`)."""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from transformers import TrainerCallback

from finetune.automl.search import DistillSearch, RecipeSearch
from finetune.automl.storage import job_seed, load_study
from finetune.data import read_rows
from finetune.demo.evaluation import generate_replies
from finetune.demo.skills import exact_match
from finetune.errors import RecipeError
from finetune.kinds import JobContext, JobOutcome
from finetune.recipe import TrainingKeys
from finetune.trainer import train

log = logging.getLogger(__name__)

JOB_ATTR = "job_id"  # the trial's job, in the trial's user attributes
METRICS_ATTR = "metrics"
RECIPE_ATTR = "recipe"
OUTPUT_ATTR = "output_dir"  # the trained adapter or student, under LLMOPS_HOME
DIGESTS_ATTR = "dataset_digests"


# Training metrics a trial keeps (a student's parameter counts too).
KEPT_METRICS = (
    "train_loss",
    "eval_loss",
    "steps",
    "num_parameters",
    "teacher_num_parameters",
    "parameter_ratio",
)


@dataclass
class Trained:
    output_dir: Path
    metrics: dict[str, float]
    dataset_digests: list[str]


def validation_rows(recipe: TrainingKeys, limit: int) -> list[dict[str, Any]]:
    """The recipe's validation chat rows that exact match scores (at most `limit`)."""
    rows = []
    for spec in recipe.datasets:
        if spec.split == "validation":
            if spec.type != "chat":
                raise RecipeError(
                    f"exact_match scores chat rows; {spec.path} is {spec.type}", param="datasets"
                )
            rows.extend(row for _, row in read_rows(Path(spec.path), spec.type))
    return rows[:limit]


class TrialCallback(TrainerCallback):
    """Scores the model while it trains (for the pruner) and once at the end."""

    def __init__(self, trial: optuna.Trial, search: RecipeSearch, rows: Sequence[dict[str, Any]]):
        self.trial = trial
        self.search = search
        self.rows = rows
        self.metric = search.metrics[0]
        self.pruning = search.pruner is not None
        self.pruned_at: int | None = None
        self.metrics: dict[str, float] = {}

    def _score(self, model: Any, tokenizer: Any) -> tuple[float, float]:
        """(exact match, milliseconds per row) on the validation rows."""
        evaluation = self.search.evaluation
        was_training, use_cache = model.training, model.config.use_cache
        model.eval()
        model.config.use_cache = True
        start = time.perf_counter()
        prompts = [row["messages"][:-1] for row in self.rows]
        replies = generate_replies(
            model, tokenizer, prompts, evaluation.batch_size, evaluation.max_new_tokens
        )
        elapsed_ms = (time.perf_counter() - start) * 1000 / len(self.rows)
        model.config.use_cache = use_cache
        model.train(was_training)
        hits = sum(
            exact_match(reply, row["messages"][-1]["content"])
            for reply, row in zip(replies, self.rows, strict=True)
        )
        return hits / len(self.rows), elapsed_ms

    def _report(self, value: float, step: int, control: Any) -> None:
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.pruned_at = step
            control.should_training_stop = True

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any):
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.metrics["trainable_params"] = float(trainable)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        every = self.search.evaluation.every_steps
        if self.pruning and self.metric == "exact_match" and state.global_step % every == 0:
            value, _ = self._score(kwargs["model"], kwargs["processing_class"])
            self._report(value, state.global_step, control)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **_: Any):
        if self.pruning and self.metric == "eval_loss" and "eval_loss" in (metrics or {}):
            self._report(float(metrics["eval_loss"]), state.global_step, control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pruned_at is None and self.rows:
            scored = self._score(kwargs["model"], kwargs["processing_class"])
            self.metrics["exact_match"], self.metrics["latency_ms"] = scored


def _trial_of_job(study: optuna.Study, job_id: str) -> optuna.trial.FrozenTrial | None:
    found = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(JOB_ATTR) == job_id]
    return found[-1] if found else None


def _relative(path: Path, home: Path) -> str:
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


def _train(search: RecipeSearch, recipe: Any, ctx: JobContext, callback: TrialCallback) -> Trained:
    callbacks = [*ctx.callbacks, callback]
    if isinstance(search, DistillSearch):
        from finetune.distill.job import distill_in_job

        student = distill_in_job(ctx, recipe, callbacks)
        return Trained(student.model_dir, student.metrics, student.dataset_digests)
    result = train(
        recipe,
        ctx.job_dir,
        registry=ctx.registry,
        resume_from=ctx.resume_from,
        callbacks=callbacks,
        progress=ctx.progress,
    )
    return Trained(result.adapter_dir, result.metrics, result.dataset_digests)


def run_tune_trial(ctx: JobContext) -> JobOutcome:
    name = ctx.job.recipe["study"]
    study, search = load_study(ctx.stack, name, job_seed(ctx.job.id))
    earlier = _trial_of_job(study, ctx.job.id)
    if earlier is not None and earlier.state.is_finished():
        return JobOutcome(metrics=earlier.user_attrs.get(METRICS_ATTR, {}))
    if earlier is not None:
        trial = optuna.Trial(study, earlier._trial_id)
    else:
        trial = study.ask()
        trial.set_user_attr(JOB_ATTR, ctx.job.id)
    recipe = search.suggest(trial, search.trial_recipe())
    if search.pruner is not None and search.metrics[0] == "eval_loss":
        recipe = recipe.model_copy(update={"eval_steps": search.evaluation.every_steps})
    shown = ", ".join(f"{k}={v}" for k, v in trial.params.items())
    ctx.store.add_event(ctx.job.id, f"Study {name}, trial {trial.number}: {shown}")
    callback = TrialCallback(trial, search, validation_rows(recipe, search.evaluation.max_rows))
    trained = _train(search, recipe, ctx, callback)
    if ctx.stop.is_set():  # cancelled or stopped: the study marks the trial failed
        return JobOutcome(metrics=trained.metrics)
    metrics = {
        **{k: trained.metrics[k] for k in KEPT_METRICS if k in trained.metrics},
        **callback.metrics,
    }
    trial.set_user_attr(METRICS_ATTR, metrics)
    trial.set_user_attr(RECIPE_ATTR, recipe.model_dump(mode="json"))
    trial.set_user_attr(OUTPUT_ATTR, _relative(trained.output_dir, ctx.stack.resolved_home))
    trial.set_user_attr(DIGESTS_ATTR, trained.dataset_digests)
    if callback.pruned_at is not None:
        study.tell(trial, state=TrialState.PRUNED)
        ctx.store.add_event(ctx.job.id, f"Trial {trial.number} pruned at step {callback.pruned_at}")
    else:
        study.tell(trial, [metrics[m] for m in search.metrics])
        scores = ", ".join(f"{m}={metrics[m]:.4g}" for m in search.metrics)
        ctx.store.add_event(ctx.job.id, f"Trial {trial.number} complete: {scores}")
    return JobOutcome(metrics={**metrics, "trial": float(trial.number)})
