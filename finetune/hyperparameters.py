"""From an OpenAI fine-tuning job request to a recipe: `auto` hyperparameters resolved, the
API's hyperparameters mapped to recipe keys.

The `auto` rule, chosen so that a few hundred rows teach (measured on the demo model: 300 rows
of a new phrasing of a skill it knows reach 98% exact match on unseen inputs, on every seed
tried; with half the steps or twice the learning rate, some seeds learned a quarter of it):

- batch size: a 64th of the rows, between 4 and 64;
- epochs: enough for about 600 optimizer steps, between 1 and 25 (small data needs many
  passes; large data one);
- learning rate: 2.5e-3 for a model 128 wide, scaled by 128 / hidden size, between 1e-4 and
  2.5e-3 (1e-4 from a width of 3,200 up), times `learning_rate_multiplier`;
- LoRA on every linear layer of the base, rank 8 (the recipe's defaults)."""

import json
import math
import secrets
from pathlib import Path

from finetune.errors import RecipeError
from finetune.protocol import JobHyperparameters, JobRequest
from finetune.recipe import Recipe, parse_recipe

TARGET_STEPS = 600


def auto_batch_size(rows: int) -> int:
    return min(64, max(4, rows // 64))


def auto_epochs(rows: int, batch_size: int) -> int:
    return min(25, max(1, math.ceil(TARGET_STEPS * batch_size / max(rows, 1))))


def auto_learning_rate(hidden_size: int) -> float:
    return min(2.5e-3, max(1e-4, 2.5e-3 * 128 / hidden_size))


def resolve_hyperparameters(request: JobRequest, rows: int) -> JobHyperparameters:
    """The request's hyperparameters (validated by their bounds) with `auto` replaced, for a
    training file of `rows` rows."""
    given = request.given_hyperparameters()
    batch_size = auto_batch_size(rows) if given.batch_size == "auto" else given.batch_size
    epochs = auto_epochs(rows, batch_size) if given.n_epochs == "auto" else given.n_epochs
    multiplier = given.learning_rate_multiplier
    return JobHyperparameters(
        n_epochs=epochs,
        batch_size=batch_size,
        learning_rate_multiplier=1.0 if multiplier == "auto" else multiplier,
    )


def api_recipe(
    request: JobRequest,
    base_ref: str,
    base_dir: Path,
    data: list[tuple[Path, str]],
    hyper: JobHyperparameters,
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
                "learning_rate": auto_learning_rate(int(config.get("hidden_size", 4096)))
                * hyper.learning_rate_multiplier,
                "warmup_ratio": 0.05,
                "seed": request.seed if request.seed is not None else secrets.randbelow(2**31),
                "suffix": request.suffix,
            },
            "job",
        )
    except RecipeError as err:
        raise RecipeError(err.message.removeprefix("job: ")) from None
