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
        default="demo", description="Model `llm-serve --demo` builds if it is missing; empty: none."
    )
    embedding_model: str = Field(
        default="minilm",
        description="Embedding model `llm-serve --demo` registers if it is missing "
        "(all-MiniLM-L6-v2, shipped offline); empty: none.",
    )
    edge_signing_key: Path | None = Field(
        default=None,
        description="PEM file of the Ed25519 private key that signs edge bundles (readable by "
        "its owner only); default LLMOPS_HOME/edge/signing_key.pem, generated on first use.",
    )

    grammar_compile_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest the local engine spends compiling one output grammar (a "
        "response_format schema, tool schemas); a grammar that takes longer is refused with "
        "a 400, and so is the same grammar asked for again.",
    )
    grammar_compile_workers: int = Field(
        default=2,
        ge=1,
        description="Grammars the local engine compiles at once per model; others wait.",
    )

    def signing_key_path(self, home: Path) -> Path:
        return self.edge_signing_key or home / "edge" / "signing_key.pem"
