"""Gateway settings from the environment (`LLMOPS_SERVING_*`)."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_SERVING_")

    config: Path | None = Field(
        default=None, description="The serving YAML (see configs/serving.yaml); defaults apply."
    )
    demo_model: str = Field(
        default="demo", description="Model `llm-serve` builds on first run if it is missing."
    )
    embedding_model: str = Field(
        default="minilm",
        description="Embedding model `llm-serve` registers on first run if it is missing "
        "(all-MiniLM-L6-v2, shipped offline); empty: none.",
    )
