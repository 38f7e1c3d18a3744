"""What a recipe file asks for: a LoRA / QLoRA fine-tune (no `method` key, as in every
axolotl recipe), or `method: distill` / `method: prune`, each with its own keys and job kind.

    llm-finetune run configs/finetune/demo-distill.yaml
    llm-finetune run configs/finetune/demo-prune.yaml

Each method's recipe is checked before its job is created (the teacher or source exists, the
shape fits), so a bad recipe is a one-line error and no job."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.plugins import load_plugin
from finetune.errors import RecipeError
from finetune.kinds import DISTILL, FINE_TUNE, PRUNE
from finetune.recipe import parse_recipe, read_recipe_data
from registry.service import Registry


@dataclass(frozen=True)
class Method:
    kind: str  # the job kind that runs it
    parse: str  # module:callable, (data, source) -> recipe
    check: str | None = None  # module:callable, (recipe, registry) -> None; raises RecipeError


METHODS: dict[str, Method] = {
    "distill": Method(
        DISTILL,
        "finetune.distill.recipe:parse_distill_recipe",
        "finetune.distill.job:check_distill_recipe",
    ),
    "prune": Method(
        PRUNE, "finetune.prune.recipe:parse_prune_recipe", "finetune.prune.job:check_prune_recipe"
    ),
}


def parse_job_recipe(data: Any, source: str = "recipe") -> tuple[str, Any]:
    """(job kind, validated recipe) for recipe data."""
    method = data.get("method") if isinstance(data, dict) else None
    if method is None:
        return FINE_TUNE, parse_recipe(data, source)
    if method not in METHODS:
        raise RecipeError(
            f"{source}: method: {method!r} is unknown; leave it out for a LoRA / QLoRA "
            f"fine-tune, or use one of {', '.join(sorted(METHODS))}",
            param="method",
        )
    parse: Callable[[Any, str], Any] = load_plugin(METHODS[method].parse, "recipe method")
    return METHODS[method].kind, parse(data, source)


def load_job_recipe(path: Path, overrides: dict[str, Any] | None = None) -> tuple[str, Any]:
    return parse_job_recipe(read_recipe_data(path, overrides), str(path))


def check_job_recipe(recipe: Any, registry: Registry) -> None:
    """Run the recipe's method check (models exist, shapes fit); nothing for a LoRA recipe."""
    method = getattr(recipe, "method", None)
    if method is not None and (check := METHODS[method].check) is not None:
        load_plugin(check, "recipe check")(recipe, registry)
