"""Evaluation settings, read from the environment (`LLMOPS_EVALS_*`)."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import SHIPPED_CONFIGS


class EvalsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_EVALS_")

    suites_dir: Path = Field(
        default=SHIPPED_CONFIGS / "evals",
        description="Where suites are found by name (`demo-skills` is demo-skills.yaml).",
    )
    gates_file: Path = Field(
        default=SHIPPED_CONFIGS / "evals" / "gates.yaml",
        description="Which suites guard which aliases of which models (the eval gate).",
    )
    batch_size: int = Field(
        default=64, ge=1, le=4096, description="Prompts per forward pass, in process."
    )
    traffic_source: str = Field(
        default="serving.traffic:open_traffic_reader",
        description="What reads the gateway's traffic log for the drift monitor and the loop "
        "when they run outside the gateway: 'package.module:callable' taking the stack's "
        "settings (the gateway hands over its own log).",
    )
    max_running_runs: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Runs the gateway scores at once (started over HTTP, each on a worker "
        "thread with a copy of its model).",
    )
    max_queued_runs: int = Field(
        default=4,
        ge=0,
        le=1000,
        description="Runs started over HTTP that wait for a worker; beyond them, starting a run "
        "is refused with 429 until one finishes.",
    )
    max_queued_runs_per_key: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Of those, how many one API key may have waiting (429 beyond), so that one "
        "key cannot hold the queue; unset: half the queue, at least 1.",
    )

    @property
    def queued_runs_per_key(self) -> int:
        return self.max_queued_runs_per_key or max(1, self.max_queued_runs // 2)
