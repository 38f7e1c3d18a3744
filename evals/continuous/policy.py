"""A loop policy (`configs/continuous/*.yaml`): what counts as drift, what to evaluate, what
drop retrains, how the training set is built, which gate the candidate must pass, and whether
it is promoted automatically."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.configs import load_yaml_config
from evals.drift.config import DriftConfig
from evals.errors import invalid
from evals.gates import AliasGate
from evals.suites import NAME
from finetune.demo.skills import SKILLS

LABELLED_TASK = "labelled"  # the task of recent corrections in evaluations and gates


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelledConfig(_Strict):
    since_hours: float = Field(
        168, gt=0, description="Corrections given in this many hours count (all versions)."
    )
    holdout: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.3, description="Share of corrections kept for evaluation and never trained on."
    )
    min_rows: int = Field(
        20, ge=2, description="Fewer corrections than this: the loop waits for more."
    )
    max_tokens: int = Field(32, ge=1, le=4096, description="Answer length cap when scoring.")
    max_per_key: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="At most this many corrections from one API key count in the window "
        "(`since_hours`): its first ones. Corrections come only from keys with the teach scope "
        "(and, on a gateway without keys, from its operator, who is not capped).",
    )
    review: bool = Field(
        False,
        description="Count only corrections an admin approved (`llm-evals feedback approve`); "
        "without review, every correction from a key allowed to teach counts unless rejected.",
    )


class EvaluateConfig(_Strict):
    suites: list[str] = Field(
        default_factory=list, description="Held-out suites run on drift (names or paths)."
    )
    labelled: LabelledConfig = Field(default_factory=LabelledConfig)


class ReplaySpec(_Strict):
    path: Path | None = Field(None, description="Chat JSONL of the original training data.")
    demo: str | None = Field(None, description=f"A demo skill: {', '.join(SKILLS)}.")
    rows: int = Field(100, ge=1, le=1_000_000, description="Rows taken from it.")

    @model_validator(mode="after")
    def _one_source(self) -> "ReplaySpec":
        if (self.path is None) == (self.demo is None):
            raise ValueError("give exactly one of `path` or `demo`")
        if self.demo is not None and self.demo not in SKILLS:
            raise ValueError(f"unknown demo skill {self.demo!r}; choose one of {', '.join(SKILLS)}")
        return self


class TrainConfig(_Strict):
    recipe: Path | None = Field(
        None,
        description="A fine-tuning recipe (its datasets and base are replaced); none: the "
        "`auto` rule of the fine-tuning API.",
    )
    suffix: str = Field("continuous", pattern=NAME, description="Names the fine-tuning job.")
    replay: list[ReplaySpec] = Field(
        default_factory=list,
        description="Original data mixed with the corrections, so old skills are not lost.",
    )
    timeout_s: float = Field(3600, gt=0, description="Longest wait for the job.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the training run.")


class Policy(_Strict):
    name: str = Field(pattern=NAME)
    model: str = Field(min_length=1, description="The registry model the loop looks after.")
    alias: str = Field("production", description="The alias it watches and moves.")
    drift: DriftConfig = Field(default_factory=DriftConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    retrain_below: dict[str, float] = Field(
        min_length=1,
        description="task/metric -> the value under which the version is retrained "
        f"(`{LABELLED_TASK}/exact_match` is the recent corrections).",
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    gate: AliasGate = Field(
        description="Suites and rules the candidate must pass against the current version "
        f"(`evaluate.suites` and the `{LABELLED_TASK}` task are added to them); a rule must "
        "judge a metric of a suite no feedback wrote, so the gate never rests on feedback alone."
    )
    promote: Literal["auto", "staging"] = Field(
        "staging",
        description="auto: move the alias when the gate passes; staging: stop at staging "
        "for a person to promote.",
    )


def load_policy(path: Path) -> Policy:
    """A policy, with every file it names checked now rather than at the first drift."""
    policy = load_yaml_config(path, Policy, "loop policy")
    named = [("train.recipe", policy.train.recipe)] + [
        (f"train.replay[{i}].path", r.path) for i, r in enumerate(policy.train.replay)
    ]
    for where, file in named:
        if file is not None and not file.is_file():
            raise invalid(f"loop policy {path.name}: {where}: no such file {str(file)!r}")
    return policy
