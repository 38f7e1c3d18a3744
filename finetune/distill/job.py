"""The `distill` job kind: train a smaller student of the teacher's type from the teacher's
logits and the recipe's labels, and register it as `kind: distilled` with the teacher as its
parent, the data's digests and the recipe's."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from core.digests import bytes_digest
from finetune.data import encode_rows
from finetune.distill.loss import DistillationTrainer
from finetune.distill.recipe import DistillRecipe, parse_distill_recipe
from finetune.distill.student import build_student, student_config
from finetune.distill.traffic import teacher_rows, traffic_prompts
from finetune.errors import RecipeError
from finetune.full_training import num_parameters, register_once, train_full
from finetune.kinds import JobContext, JobOutcome
from finetune.recipe import recipe_digest
from finetune.source_model import SourceModel, resolve_source
from finetune.trainer import load_training_data
from registry.entities import ModelVersion, VersionKind
from registry.service import Registry


@dataclass
class Distilled:
    model_dir: Path
    teacher: SourceModel
    metrics: dict[str, float]
    dataset_digests: list[str]


def check_student_size(teacher: SourceModel, recipe: DistillRecipe) -> tuple[int, int]:
    """(student, teacher) parameter counts, from the configs alone; RecipeError for a student
    that is not smaller than its teacher."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = teacher.config()
    with init_empty_weights():
        teacher_size = num_parameters(AutoModelForCausalLM.from_config(config))
        student_size = num_parameters(
            AutoModelForCausalLM.from_config(student_config(config, recipe.student))
        )
    if student_size >= teacher_size:
        raise RecipeError(
            f"student: {student_size:,} parameters is not smaller than the teacher's "
            f"{teacher_size:,}; shrink num_layers, hidden_size or intermediate_size",
            param="student",
        )
    return student_size, teacher_size


def check_distill_recipe(recipe: DistillRecipe, registry: Registry) -> None:
    """The teacher exists and the student is smaller (before a job is created)."""
    check_student_size(resolve_source(recipe.teacher_model, registry, "teacher_model"), recipe)


def _traffic_examples(
    recipe: DistillRecipe, teacher: PreTrainedModel, tokenizer: Any, url: str, owner: str | None
) -> tuple[list[Any], str]:
    assert recipe.traffic is not None
    prompts = traffic_prompts(url, recipe.traffic, owner)
    rows = teacher_rows(teacher, tokenizer, prompts, recipe.traffic.max_new_tokens)
    examples = encode_rows(tokenizer, rows, "chat")
    digest = bytes_digest("\n".join(str(r["messages"]) for _, r in rows).encode())
    return examples, digest


def distill(
    recipe: DistillRecipe,
    job_dir: Path,
    registry: Registry,
    *,
    database_url: str = "",
    owner: str | None = None,
    resume_from: Path | None = None,
    callbacks: Any = (),
    progress: bool = True,
) -> Distilled:
    job_dir.mkdir(parents=True, exist_ok=True)
    source = resolve_source(recipe.teacher_model, registry, "teacher_model")
    student_size, teacher_size = check_student_size(source, recipe)
    teacher, tokenizer = source.load()
    train_rows, eval_rows, digests = load_training_data(recipe, tokenizer, job_dir)
    if recipe.traffic is not None:
        extra, digest = _traffic_examples(recipe, teacher, tokenizer, database_url, owner)
        train_rows, digests = [*train_rows, *extra], [*digests, digest]
    student = build_student(teacher, recipe.student, recipe.seed)
    model_dir, metrics = train_full(
        student,
        tokenizer,
        recipe,
        job_dir,
        train_rows,
        eval_rows,
        trainer_class=DistillationTrainer,
        trainer_options={
            "teacher": teacher,
            "temperature": recipe.kd_temperature,
            "alpha": recipe.kd_alpha,
        },
        resume_from=resume_from,
        callbacks=callbacks,
        progress=progress,
    )
    metrics |= {
        "num_parameters": float(student_size),
        "teacher_num_parameters": float(teacher_size),
        "parameter_ratio": student_size / teacher_size,
    }
    return Distilled(model_dir, source, metrics, digests)


def register_distilled(
    registry: Registry,
    result: Distilled,
    recipe: DistillRecipe,
    job_id: str,
    owner: str | None,
    tags: dict[str, str] | None = None,
) -> ModelVersion:
    teacher = result.teacher
    name = recipe.register_as or f"{teacher.name}-{recipe.suffix or 'distilled'}"
    shape = student_config(teacher.config(), recipe.student)
    return register_once(
        registry,
        name,
        result.model_dir,
        kind=VersionKind.DISTILLED,
        job_id=job_id,
        set_staging_alias=recipe.set_staging_alias,
        parent=teacher.version.ref if teacher.version else None,
        metrics=result.metrics,
        tags={
            "teacher": teacher.reference,
            "kd_temperature": str(recipe.kd_temperature),
            "kd_alpha": str(recipe.kd_alpha),
            "student_init": recipe.student.init,
            "num_layers": str(shape.num_hidden_layers),
            "hidden_size": str(shape.hidden_size),
            "traffic": recipe.traffic.model if recipe.traffic else "none",
            **(tags or {}),
        },
        recipe_digest=recipe_digest(recipe),
        dataset_digests=result.dataset_digests,
        source=f"llm-finetune distill job {job_id}",
        owner=owner,
    )


def distill_in_job(ctx: JobContext, recipe: DistillRecipe, callbacks: Any) -> Distilled:
    """`distill` in a job's folder, for its owner, resuming where the job left off."""
    return distill(
        recipe,
        ctx.job_dir,
        ctx.registry,
        database_url=ctx.stack.resolved_database_url,
        owner=ctx.job.owner,
        resume_from=ctx.resume_from,
        callbacks=callbacks,
        progress=ctx.progress,
    )


def run_distill(ctx: JobContext) -> JobOutcome:
    recipe = parse_distill_recipe(ctx.job.recipe, f"job {ctx.job.id} recipe")
    result = distill_in_job(ctx, recipe, ctx.callbacks)
    if ctx.stop.is_set():
        return JobOutcome(metrics=result.metrics)
    version = register_distilled(ctx.registry, result, recipe, ctx.job.id, ctx.job.owner)
    return JobOutcome(
        registered=version,
        trained_tokens=int(result.metrics["train_tokens"]),
        metrics=result.metrics,
    )
