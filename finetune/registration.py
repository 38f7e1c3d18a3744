"""A succeeded job's adapter as a registry version, with its lineage and `ft:` name."""

import hashlib
import json

from core.refs import fine_tuned_name
from finetune.recipe import Recipe
from finetune.trainer import TrainResult
from registry.entities import FINE_TUNED_TAG, ModelVersion, VersionFormat, VersionKind
from registry.service import Registry

JOB_TAG = "fine_tuning_job"


def base_name(result: TrainResult) -> str:
    return result.base.version.name if result.base.version else result.base.path.name


def recipe_digest(recipe: Recipe) -> str:
    canonical = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def register_adapter(
    registry: Registry, result: TrainResult, recipe: Recipe, job_id: str
) -> ModelVersion:
    """Register the adapter of job `job_id` once: a job that registered before its worker died
    gets its existing version back."""
    existing = registry.list_versions(
        kind=VersionKind.ADAPTER, tags={JOB_TAG: job_id}, include_archived=True
    )
    if existing:
        return existing[0]
    base = base_name(result)
    name = recipe.register_as or f"{base}-{recipe.suffix or 'ft'}"
    version = registry.register(
        name,
        result.adapter_dir,
        kind=VersionKind.ADAPTER,
        format=VersionFormat.PEFT_LORA,
        parent=result.base.version.ref if result.base.version else None,
        metrics=result.metrics,
        tags={
            JOB_TAG: job_id,
            FINE_TUNED_TAG: fine_tuned_name(base, recipe.suffix, job_id),
            "adapter": recipe.adapter,
            "lora_r": recipe.lora_r,
            "base": result.base.reference,
        },
        recipe_digest=recipe_digest(recipe),
        dataset_digests=result.dataset_digests,
        source=f"llm-finetune job {job_id}",
        description=f"LoRA adapter trained by fine-tuning job {job_id}",
    )
    if recipe.set_staging_alias:
        registry.set_alias(
            name, "staging", version.version, reason=f"fine-tuning job {job_id} succeeded"
        )
    return version
