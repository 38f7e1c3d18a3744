"""From an OpenAI fine-tuning job request to a recipe: `auto` hyperparameters resolved, the
API's hyperparameters mapped to recipe keys."""

import json
import secrets
from pathlib import Path

from core.errors import ErrorCode
from finetune.errors import FinetuneError, RecipeError
from finetune.protocol import JobHyperparameters, JobRequest
from finetune.recipe import Recipe, parse_recipe
from finetune.settings import FinetuneSettings


def resolve_hyperparameters(request: JobRequest, settings: FinetuneSettings) -> JobHyperparameters:
    """The request's hyperparameters with `auto` replaced; 400 naming one out of range."""
    given = request.given_hyperparameters()
    checks = {
        "n_epochs": (given.n_epochs, settings.api_n_epochs, 1, 50),
        "batch_size": (given.batch_size, settings.api_batch_size, 1, 256),
        "learning_rate_multiplier": (given.learning_rate_multiplier, 1.0, 1e-3, 100.0),
    }
    resolved = {}
    for key, (value, default, low, high) in checks.items():
        value = default if value == "auto" else value
        if not low <= value <= high:
            raise FinetuneError(
                ErrorCode.INVALID,
                f"hyperparameters.{key} is {value}; use 'auto' or a value from {low} to {high}",
                param=f"hyperparameters.{key}",
                api_code="invalid_request",
            )
        resolved[key] = value
    return JobHyperparameters(**resolved)


def api_recipe(
    request: JobRequest,
    base_ref: str,
    base_dir: Path,
    data: list[tuple[Path, str]],
    hyper: JobHyperparameters,
    settings: FinetuneSettings,
) -> Recipe:
    """The LoRA recipe of an API job on the base version `base_ref` (files in `base_dir`),
    training on `data`: (path, split) pairs of chat JSONL files."""
    config = json.loads((base_dir / "config.json").read_text())
    try:
        return parse_recipe(
            {
                "base_model": base_ref,
                "adapter": "lora",
                "datasets": [
                    {"path": str(path), "type": "chat", "split": split} for path, split in data
                ],
                "sequence_len": min(2048, int(config.get("max_position_embeddings", 2048))),
                "micro_batch_size": hyper.batch_size,
                "num_epochs": hyper.n_epochs,
                "learning_rate": settings.api_learning_rate * hyper.learning_rate_multiplier,
                "warmup_ratio": 0.05,
                "seed": request.seed if request.seed is not None else secrets.randbelow(2**31),
                "suffix": request.suffix,
            },
            "job",
        )
    except RecipeError as err:
        raise RecipeError(err.message.removeprefix("job: ")) from None
