"""Evaluation settings, read from the environment (`LLMOPS_EVALS_*`)."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EvalsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_EVALS_")

    suites_dir: Path = Field(
        default=Path("configs/evals"),
        description="Where suites are found by name (`demo-skills` is demo-skills.yaml).",
    )
    gates_file: Path = Field(
        default=Path("configs/evals/gates.yaml"),
        description="Which suites guard which aliases of which models (the eval gate).",
    )
    batch_size: int = Field(
        default=64, ge=1, le=4096, description="Prompts per forward pass, in process."
    )
