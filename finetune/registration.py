"""A succeeded job's adapter as a registry version, with its lineage and `ft:` name."""

from core.errors import ErrorCode
from core.refs import fine_tuned_name
from finetune.recipe import Recipe, recipe_digest
from finetune.trainer import TrainResult
from registry.entities import FINE_TUNED_TAG, ModelVersion, VersionFormat, VersionKind
from registry.errors import RegistryError
from registry.service import Registry

JOB_TAG = "fine_tuning_job"


def base_name(result: TrainResult) -> str:
    return result.base.version.name if result.base.version else result.base.path.name


def _registered(registry: Registry, job_id: str) -> ModelVersion | None:
    found = registry.list_versions(
        kind=VersionKind.ADAPTER, tags={JOB_TAG: job_id}, include_archived=True, limit=1
    )
    return found[0] if found else None


def register_adapter(
    registry: Registry,
    result: TrainResult,
    recipe: Recipe,
    job_id: str,
    owner: str | None,
    tags: dict[str, str] | None = None,
) -> ModelVersion:
    """Register the adapter of job `job_id` once: a job that registered before its worker died,
    or while another process registered it too, gets the existing version back.

    An API key's adapters go to a model of its own (`<base>-<suffix>-<key id>`), so that no
    key adds versions to a model another key trained."""
    if (existing := _registered(registry, job_id)) is not None:
        return existing
    base = base_name(result)
    name = recipe.register_as or f"{base}-{recipe.suffix or 'ft'}"
    if owner is not None and recipe.register_as is None:
        name = f"{name}-{owner}"
    try:
        version = _register(registry, name, result, recipe, job_id, base, owner, tags or {})
    except RegistryError as err:
        if err.code is not ErrorCode.ALREADY_EXISTS or not (found := _registered(registry, job_id)):
            raise
        return found
    if recipe.set_staging_alias:
        registry.set_alias(
            name, "staging", version.version, reason=f"fine-tuning job {job_id} succeeded"
        )
    return version


def _register(
    registry: Registry,
    name: str,
    result: TrainResult,
    recipe: Recipe,
    job_id: str,
    base: str,
    owner: str | None,
    tags: dict[str, str],
) -> ModelVersion:
    return registry.register(
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
            **tags,
        },
        recipe_digest=recipe_digest(recipe),
        dataset_digests=result.dataset_digests,
        source=f"llm-finetune job {job_id}",
        description=f"LoRA adapter trained by fine-tuning job {job_id}",
        owner=owner,
    )
