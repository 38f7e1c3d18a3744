"""How the drift monitor judges a version's traffic: windows, reference, tests, false alarms."""

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Signal = Literal[
    "embedding", "prompt_tokens", "completion_tokens", "latency", "finish_reason", "feedback"
]
SIGNALS: tuple[Signal, ...] = (
    "embedding",
    "prompt_tokens",
    "completion_tokens",
    "latency",
    "finish_reason",
    "feedback",
)


class ReferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: int = Field(
        500,
        ge=20,
        le=1_000_000,
        description="The first this many requests the version answered (from `start` when "
        "given, up to `end`).",
    )
    start: datetime | None = Field(None, description="Where the reference window begins.")
    end: datetime | None = Field(None, description="Where the reference window ends.")
    data: list[Path] = Field(
        default_factory=list,
        description="Chat JSONL files (the version's training or eval data) as the reference "
        "instead of traffic: their prompts are compared, so only input signals apply.",
    )


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window: int = Field(
        200, ge=20, le=1_000_000, description="Requests per checked window: a version's newest."
    )
    min_window: int = Field(
        50, ge=10, le=1_000_000, description="Fewer requests than this are not checked yet."
    )
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    alpha: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="False-alarm rate per window over stationary traffic: split evenly "
        "between the deciding signals tested (Bonferroni).",
    )
    min_effect: float = Field(
        0.1,
        ge=0,
        le=1,
        description="The smallest effect that counts as drift (KS distance, Cramér's V, rank "
        "biserial correlation), so that very large windows do not alarm on trivia.",
    )
    deciding: list[Signal] = Field(
        default_factory=lambda: [
            "embedding",
            "prompt_tokens",
            "completion_tokens",
            "finish_reason",
            "feedback",
        ],
        description="The signals that raise drift; the others (latency by default, which "
        "moves with load) are measured and reported only.",
    )
    components: int = Field(
        8, ge=1, le=64, description="Principal components of the prompt embeddings tested."
    )
    min_ratings: int = Field(
        10, ge=2, le=100_000, description="Ratings needed on each side to test feedback."
    )

    @model_validator(mode="after")
    def _window_sizes(self) -> "DriftConfig":
        if self.min_window > self.window:
            raise ValueError(f"min_window ({self.min_window}) exceeds window ({self.window})")
        return self
