"""The `prune` job kind: structured pruning, a short full-weight recovery fine-tune, and a
`kind: pruned` version whose parent is the source, with its parameter counts as metrics."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.full_training import num_parameters, register_once, train_full
from finetune.kinds import JobContext, JobOutcome
from finetune.prune.recipe import PruneRecipe, parse_prune_recipe
from finetune.prune.structured import prune_model
from finetune.recipe import recipe_digest
from finetune.source_model import SourceModel, resolve_source
from finetune.trainer import load_training_data
from registry.entities import ModelVersion, VersionKind
from registry.service import Registry


@dataclass
class Pruned:
    model_dir: Path
    source: SourceModel
    metrics: dict[str, float]
    dataset_digests: list[str]


def check_prune_recipe(recipe: PruneRecipe, registry: Registry) -> None:
    """The source exists and the pruning fits its shape (before a job is created)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    source = resolve_source(recipe.base_model, registry, "base_model")
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(source.config())
    prune_model(model, recipe.pruning)


def prune(
    recipe: PruneRecipe,
    job_dir: Path,
    registry: Registry,
    *,
    resume_from: Path | None = None,
    callbacks: Any = (),
    progress: bool = True,
) -> Pruned:
    job_dir.mkdir(parents=True, exist_ok=True)
    source = resolve_source(recipe.base_model, registry, "base_model")
    model, tokenizer = source.load()
    before = num_parameters(model)
    prune_model(model, recipe.pruning)
    after = num_parameters(model)
    train_rows, eval_rows, digests = load_training_data(recipe, tokenizer, job_dir)
    model_dir, metrics = train_full(
        model.train(),
        tokenizer,
        recipe,
        job_dir,
        train_rows,
        eval_rows,
        resume_from=resume_from,
        callbacks=callbacks,
        progress=progress,
    )
    metrics |= {
        "num_parameters_before": float(before),
        "num_parameters": float(after),
        "parameter_ratio": after / before,
    }
    return Pruned(model_dir, source, metrics, digests)


def register_pruned(
    registry: Registry, result: Pruned, recipe: PruneRecipe, job_id: str, owner: str | None
) -> ModelVersion:
    spec = recipe.pruning
    return register_once(
        registry,
        recipe.register_as or f"{result.source.name}-{recipe.suffix or 'pruned'}",
        result.model_dir,
        kind=VersionKind.PRUNED,
        job_id=job_id,
        set_staging_alias=recipe.set_staging_alias,
        parent=result.source.version.ref if result.source.version else None,
        metrics=result.metrics,
        tags={
            "source": result.source.reference,
            "mlp_ratio": str(spec.mlp_ratio),
            "heads_ratio": str(spec.heads_ratio),
            "drop_layers": ",".join(map(str, spec.drop_layers)),
        },
        recipe_digest=recipe_digest(recipe),
        dataset_digests=result.dataset_digests,
        source=f"llm-finetune prune job {job_id}",
        owner=owner,
    )


def run_prune(ctx: JobContext) -> JobOutcome:
    recipe = parse_prune_recipe(ctx.job.recipe, f"job {ctx.job.id} recipe")
    result = prune(
        recipe,
        ctx.job_dir,
        ctx.registry,
        resume_from=ctx.resume_from,
        callbacks=ctx.callbacks,
        progress=ctx.progress,
    )
    if ctx.stop.is_set():
        return JobOutcome(metrics=result.metrics)
    version = register_pruned(ctx.registry, result, recipe, ctx.job.id, ctx.job.owner)
    return JobOutcome(
        registered=version,
        trained_tokens=int(result.metrics["train_tokens"]),
        metrics=result.metrics,
    )
