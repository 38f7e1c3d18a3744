"""From an OpenAI fine-tuning job request to a recipe: `auto` hyperparameters resolved, the
API's hyperparameters mapped to recipe keys."""

import json
import secrets
from pathlib import Path

from finetune.errors import RecipeError
from finetune.protocol import JobHyperparameters, JobRequest
from finetune.recipe import Recipe, parse_recipe
from finetune.settings import FinetuneSettings


def resolve_hyperparameters(request: JobRequest, settings: FinetuneSettings) -> JobHyperparameters:
    """The request's hyperparameters (validated by their bounds) with `auto` replaced."""
    given = request.given_hyperparameters()

    def value(given_value: float | str, auto: float) -> float:
        return auto if given_value == "auto" else given_value  # type: ignore[return-value]

    return JobHyperparameters(
        n_epochs=value(given.n_epochs, settings.api_n_epochs),
        batch_size=value(given.batch_size, settings.api_batch_size),
        learning_rate_multiplier=value(given.learning_rate_multiplier, 1.0),
    )


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
