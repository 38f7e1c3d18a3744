"""The `fine-tune` job kind: train a LoRA / QLoRA adapter from a recipe, then register it with
its lineage and `ft:` name."""

from finetune.kinds import JobContext, JobOutcome
from finetune.recipe import parse_recipe
from finetune.registration import register_adapter
from finetune.trainer import train
from registry.entities import FINE_TUNED_TAG


def run_fine_tune(ctx: JobContext) -> JobOutcome:
    recipe = parse_recipe(ctx.job.recipe, f"job {ctx.job.id} recipe")
    result = train(
        recipe,
        ctx.job_dir,
        registry=ctx.registry,
        resume_from=ctx.resume_from,
        callbacks=ctx.callbacks,
        progress=ctx.progress,
    )
    if not ctx.main_process or ctx.stop.is_set():
        return JobOutcome(metrics=result.metrics)
    # Through the store under the worker's lease: LeaseLost here, rather than a version
    # registered by a worker whose job was taken over.
    ctx.store.add_event(ctx.job.id, "Training finished; registering the adapter")
    version = register_adapter(ctx.registry, result, recipe, ctx.job.id, ctx.job.owner)
    return JobOutcome(
        registered=version,
        fine_tuned_model=version.tags[FINE_TUNED_TAG],
        trained_tokens=int(result.metrics["train_tokens"]),
        metrics=result.metrics,
    )
