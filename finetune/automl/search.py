"""Search files: YAML in `configs/automl/`, validated into a typed `Search`.

A search names its `kind` (what a trial trains: `lora`, a LoRA fine-tune, or `distill`, a
student of a teacher), its base recipe and the keys the space changes in it, one or several
objectives, the sampler and pruner, and the rule that picks the trial to register. Kinds share
everything but the recipe type, the searchable keys and what a trial builds."""

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.configs import unknown_key, validation_message
from core.digests import bytes_digest
from finetune.errors import RecipeError
from finetune.recipe import Recipe, parse_recipe

# What a trial measures; the direction is the one an objective takes unless it says otherwise.
METRICS: dict[str, str] = {
    "exact_match": "maximize",  # share of validation rows answered exactly (greedy)
    "eval_loss": "minimize",  # the Trainer's loss on the validation rows
    "train_loss": "minimize",
    "trainable_params": "minimize",  # parameters the adapter trains
    "latency_ms": "minimize",  # milliseconds per validation row of batched greedy generation
}
# Metrics that a trial can report while it trains, which pruning compares across trials.
INTERMEDIATE = ("exact_match", "eval_loss")

# Training keys every kind of search may change, and how their values are drawn when given
# as a range.
TRAINING_SEARCHABLE: dict[str, type] = {
    "learning_rate": float,
    "lr_scheduler": str,
    "warmup_ratio": float,
    "num_epochs": float,
    "max_steps": int,
    "micro_batch_size": int,
    "gradient_accumulation_steps": int,
}
LORA_SEARCHABLE: dict[str, type] = {
    "lora_r": int,
    "lora_alpha": int,
    "lora_dropout": float,
    "lora_target_modules": list,
    "adapter": str,
    "sample_packing": bool,
    **TRAINING_SEARCHABLE,
}
# A student space: the student's shape, the distillation loss and the training keys.
DISTILL_SEARCHABLE: dict[str, type] = {
    "student.num_layers": int,
    "student.hidden_size": int,
    "student.num_heads": int,
    "student.num_kv_heads": int,
    "student.intermediate_size": int,
    "student.init": str,
    "kd_temperature": float,
    "kd_alpha": float,
    **TRAINING_SEARCHABLE,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Param(_Strict):
    """One searched key: a range (`low`, `high`, optional `step` or `log`) or `choices`."""

    low: float | None = Field(None, description="Smallest value of a range.")
    high: float | None = Field(None, description="Largest value of a range.")
    step: float | None = Field(None, gt=0, description="Spacing of a discrete range.")
    log: bool = Field(False, description="Draw a range on a log scale.")
    choices: list[Any] | None = Field(None, min_length=1, description="Values to choose among.")

    @model_validator(mode="after")
    def _one_form(self) -> "Param":
        ranged = self.low is not None or self.high is not None
        if (self.choices is None) == (not ranged):
            raise ValueError("give either choices, or low and high")
        if ranged:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high")
            if self.low > self.high:
                raise ValueError(f"low {self.low} is above high {self.high}")
            if self.log and (self.step is not None or self.low <= 0):
                raise ValueError("a log range needs low > 0 and no step")
        return self

    def values(self) -> list[Any]:
        """The values at the edges of the space (choices, or both ends of a range)."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def _choice_label(value: Any) -> Any:
    """Optuna chooses among scalars: a list of module names becomes one `a+b` label."""
    return "+".join(value) if isinstance(value, list) else value


class Objective(_Strict):
    metric: str = Field(description=f"What a trial is scored on: {', '.join(METRICS)}.")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Default: the metric's natural direction (exact_match up, others down)."
    )

    @field_validator("metric")
    @classmethod
    def _known(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(unknown_key(metric, list(METRICS)).replace("key", "metric", 1))
        return metric

    @property
    def goal(self) -> str:
        return self.direction or METRICS[self.metric]


class Pruner(_Strict):
    type: Literal["median", "hyperband"] = Field(
        description="median: stop a trial below the median of earlier ones at the same step; "
        "hyperband: successive halving over several brackets."
    )
    n_startup_trials: int = Field(
        2, ge=0, description="median: trials that always run to the end first."
    )
    n_warmup_steps: int = Field(0, ge=0, description="median: steps before a trial can stop.")
    min_resource: int = Field(1, gt=0, description="hyperband: steps every trial gets.")
    reduction_factor: int = Field(3, ge=2, description="hyperband: 1/N of trials go on.")

    def build(self) -> optuna.pruners.BasePruner:
        if self.type == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=self.n_startup_trials, n_warmup_steps=self.n_warmup_steps
            )
        return optuna.pruners.HyperbandPruner(
            min_resource=self.min_resource, reduction_factor=self.reduction_factor
        )


class Sampler(_Strict):
    type: Literal["tpe", "nsga2", "random"] = Field(
        "tpe", description="tpe (one or several objectives), nsga2 (several), random."
    )
    seed: int = Field(0, description="Seeds the sampler (mixed with each trial's job id).")
    n_startup_trials: int = Field(3, ge=0, description="tpe: random trials before modelling.")
    population_size: int = Field(4, ge=2, description="nsga2: trials per generation.")

    def build(self, job_seed: int) -> optuna.samplers.BaseSampler:
        seed = self.seed * 1_000_003 + job_seed
        if self.type == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.type == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=self.population_size, seed=seed)
        return optuna.samplers.TPESampler(
            n_startup_trials=self.n_startup_trials, constant_liar=True, seed=seed
        )


class Evaluation(_Strict):
    every_steps: int = Field(5, gt=0, description="Steps between intermediate evaluations.")
    max_rows: int = Field(64, gt=0, description="Validation rows scored per evaluation.")
    max_new_tokens: int = Field(24, gt=0, description="Longest generated answer.")
    batch_size: int = Field(32, gt=0, description="Rows generated at once.")


class Bound(_Strict):
    min: float | None = Field(None, description="Smallest allowed value.")
    max: float | None = Field(None, description="Largest allowed value.")


class Select(_Strict):
    by: str | None = Field(None, description="Objective that ranks trials (default: the first).")
    where: dict[str, Bound] = Field(
        default_factory=dict,
        description="Limits on a trial's metrics, such as trainable_params: {max: 100000}.",
    )


STUDY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class SearchBase(_Strict):
    kind: str = Field(description="What a trial trains: lora or distill.")
    study: str = Field(
        pattern=STUDY_PATTERN,
        description="Study name in the database; running the file again resumes it.",
    )
    trials: int = Field(gt=0, le=10_000, description="Trials the study should finish.")
    objectives: list[Objective] = Field(min_length=1, description="One, or several (Pareto).")
    sampler: Sampler = Field(default_factory=Sampler, description="How trials are drawn.")
    pruner: Pruner | None = Field(None, description="Stop poor trials early (one objective).")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Scoring a trial.")
    select: Select = Field(default_factory=Select, description="Which trial to register.")
    register_chosen: bool = Field(True, description="Register the selected trial's adapter.")
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Trials run first with these values (settings known to be good), each a "
        "mapping of searched keys; the sampler draws the rest.",
    )

    @field_validator("objectives", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"metric": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "SearchBase":
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError("objectives: each metric at most once")
        if self.pruner is not None:
            if len(metrics) > 1:
                raise ValueError(
                    "pruner: Optuna prunes single-objective studies only; drop the pruner or "
                    "keep one objective"
                )
            if metrics[0] not in INTERMEDIATE:
                raise ValueError(
                    f"pruner: {metrics[0]} is measured after training only; prune on "
                    f"{' or '.join(INTERMEDIATE)}"
                )
        if self.sampler.type == "nsga2" and len(metrics) < 2:
            raise ValueError("sampler: nsga2 is for several objectives; use tpe for one")
        if self.select.by is not None and self.select.by not in metrics:
            raise ValueError(f"select.by: {self.select.by!r} is not one of the objectives")
        for metric in self.select.where:
            if metric not in METRICS:
                raise ValueError(unknown_key(metric, list(METRICS), "in select.where: "))
        return self

    def enqueued(self) -> list[dict[str, Any]]:
        """`enqueue` as Optuna takes it (module lists as their choice labels)."""
        return [{k: _choice_label(v) for k, v in values.items()} for values in self.enqueue]

    @property
    def directions(self) -> list[str]:
        return [o.goal for o in self.objectives]

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    def digest(self) -> str:
        """What makes two runs the same study: everything but the trial count."""
        data = self.model_dump(mode="json", exclude={"trials"})
        return bytes_digest(json.dumps(data, sort_keys=True).encode())


def _with_values(recipe: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Recipe data with searched values set; `student.hidden_size` sets a nested key."""
    data = {**recipe}
    for key, value in values.items():
        outer, _, inner = key.partition(".")
        if inner:
            data[outer] = {**(data.get(outer) or {}), inner: value}
        else:
            data[key] = value
    return data


class RecipeSearch(SearchBase):
    """A search whose trials train a recipe: a base recipe and the keys the space changes."""

    SEARCHABLE: ClassVar[dict[str, type]]
    MODEL_KEY: ClassVar[str]  # the recipe key naming the model a trial starts from

    recipe: str | dict[str, Any] = Field(
        description="The base recipe: a YAML file (configs/finetune/...) or the recipe inline."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Recipe keys replaced in every trial."
    )
    space: dict[str, Param] = Field(description="Recipe keys searched, each a range or choices.")

    @classmethod
    def parse_recipe(cls, data: Any, source: str) -> Any:
        raise NotImplementedError

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Param]) -> dict[str, Param]:
        if not space:
            raise ValueError(
                f"the search space is empty; search at least one of {', '.join(cls.SEARCHABLE)}"
            )
        for key, param in space.items():
            if key not in cls.SEARCHABLE:
                raise ValueError(unknown_key(key, list(cls.SEARCHABLE), "in space: "))
            kind = cls.SEARCHABLE[key]
            if param.choices is None and kind not in (int, float):
                raise ValueError(f"space.{key}: give choices (it is not a number)")
            if kind is int and param.choices is None:
                bounds = [param.low, param.high, param.step or 1]
                if any(b is not None and b != int(b) for b in bounds):
                    raise ValueError(f"space.{key}: a whole-number range needs whole low/high/step")
        return space

    @model_validator(mode="after")
    def _enqueued_in_space(self) -> "RecipeSearch":
        for values in self.enqueue:
            for key in values:
                if key not in self.space:
                    raise ValueError(unknown_key(key, list(self.space), "in enqueue: "))
        return self

    def trial_recipe(self) -> Any:
        """The (inline) base recipe, validated."""
        return self.parse_recipe(self.recipe, f"study {self.study} recipe")

    def model(self) -> str:
        """The model every trial starts from (a registry reference or a folder)."""
        return getattr(self.trial_recipe(), self.MODEL_KEY)

    def base_recipe(self) -> Any:
        """The base recipe with `overrides`; data paths made absolute, since trials run in
        worker processes that may start elsewhere."""
        source = "recipe"
        data: Any = self.recipe
        if isinstance(self.recipe, str):
            path = Path(self.recipe).expanduser()
            source = str(path)
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except FileNotFoundError:
                raise RecipeError(f"recipe {path} does not exist", param="recipe") from None
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe is a mapping of keys to values")
        recipe = self.parse_recipe({**data, **self.overrides}, source)
        datasets = [
            d.model_copy(update={"path": str(Path(d.path).expanduser().resolve())})
            for d in recipe.datasets
        ]
        return recipe.model_copy(update={"datasets": datasets})

    def check(self) -> Any:
        """The base recipe, with every edge of the space tried on it (a rank of 0, an unknown
        scheduler), so a bad space fails here and not in its first trial."""
        recipe = self.base_recipe()
        if any(m in ("exact_match", "eval_loss") for m in self.metrics) and not any(
            d.split == "validation" for d in recipe.datasets
        ):
            raise RecipeError(
                "objectives: exact_match and eval_loss score the recipe's validation rows; "
                "add a dataset with split: validation",
                param="objectives",
            )
        for key, param in self.space.items():
            for value in param.values():
                value = int(value) if self.SEARCHABLE[key] is int else value
                trial = _with_values(recipe.model_dump(mode="json"), {key: value})
                self.parse_recipe(trial, f"space.{key} = {value!r}")
        return recipe

    def suggest(self, trial: optuna.Trial, recipe: Any) -> Any:
        """The trial's recipe: the base with this trial's values."""
        values: dict[str, Any] = {}
        for key, param in self.space.items():
            kind = self.SEARCHABLE[key]
            if param.choices is not None:
                labels = {_choice_label(c): c for c in param.choices}
                values[key] = labels[trial.suggest_categorical(key, list(labels))]
            elif kind is int:
                low, high, step = int(param.low), int(param.high), int(param.step or 1)  # type: ignore[arg-type]
                values[key] = trial.suggest_int(key, low, high, step=step, log=param.log)
            else:
                values[key] = trial.suggest_float(
                    key,
                    param.low,  # type: ignore[arg-type]
                    param.high,  # type: ignore[arg-type]
                    step=param.step,
                    log=param.log,
                )
        data = _with_values(recipe.model_dump(mode="json"), values)
        return self.parse_recipe(data, f"trial {trial.number}")


class LoraSearch(RecipeSearch):
    SEARCHABLE = LORA_SEARCHABLE
    MODEL_KEY = "base_model"

    kind: Literal["lora"] = Field(description="A LoRA fine-tune per trial.")

    @classmethod
    def parse_recipe(cls, data: Any, source: str) -> Recipe:
        return parse_recipe(data, source)


class DistillSearch(RecipeSearch):
    SEARCHABLE = DISTILL_SEARCHABLE
    MODEL_KEY = "teacher_model"

    kind: Literal["distill"] = Field(
        description="A student distilled per trial (recipe: a method: distill recipe)."
    )

    @classmethod
    def parse_recipe(cls, data: Any, source: str) -> Any:
        from finetune.distill.recipe import parse_distill_recipe

        if isinstance(data, dict) and data.get("method", "distill") != "distill":
            raise RecipeError(f"{source}: kind: distill searches a method: distill recipe")
        return parse_distill_recipe({"method": "distill", **data}, source)


SEARCH_KINDS: dict[str, type[RecipeSearch]] = {"lora": LoraSearch, "distill": DistillSearch}


def parse_search(data: Any, source: str = "search") -> RecipeSearch:
    """Validate search data; RecipeError names the wrong key (and the nearest valid one)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a search is a mapping of keys to values")
    kind = data.get("kind", "lora")
    if kind not in SEARCH_KINDS:
        raise RecipeError(
            f"{source}: kind {kind!r} is unknown; known kinds: {', '.join(SEARCH_KINDS)}",
            param="kind",
        )
    model = SEARCH_KINDS[kind]
    try:
        return model.model_validate({"kind": kind, **data})
    except ValidationError as err:
        raise RecipeError(f"{source}: {validation_message(err, model)}") from None


def load_search(path: Path, trials: int | None = None) -> RecipeSearch:
    """A search file, validated and checked against its base recipe; `study` defaults to the
    file's name."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"search {path} does not exist") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"search {path} is not valid YAML: {err}") from None
    if isinstance(data, dict):
        data = {"study": path.stem, **data}
        if trials is not None:
            data["trials"] = trials
    search = parse_search(data, str(path))
    return embed_recipe(search, search.check())


def embed_recipe(search: RecipeSearch, recipe: Any) -> RecipeSearch:
    """`search` with `recipe` inline: what the study stores, the same for every worker."""
    return search.model_copy(update={"recipe": recipe.model_dump(mode="json"), "overrides": {}})
