"""The `batches` section of `configs/serving.yaml`."""

from pydantic import BaseModel, ConfigDict, Field


class BatchesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_in_flight: int = Field(
        4,
        gt=0,
        le=256,
        description="Lines of one batch running at once. Batch lines queue behind live "
        "requests on the local engine; on vLLM this bound is what leaves room for live "
        "traffic.",
    )
    max_lines: int = Field(
        50_000, gt=0, le=1_000_000, description="Requests in one batch file (400 beyond)."
    )
    max_active_per_key: int = Field(
        16, gt=0, le=10_000, description="Batches one API key may have unfinished (429)."
    )
    retry_for_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="How long a line the key's rate limit or a full engine turns away is "
        "tried again (after each Retry-After) before it fails with that error.",
    )
    poll_s: float = Field(
        2.0, gt=0, le=600, description="How often the gateway looks for batches to run."
    )
    lease_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How long a gateway process holds a batch without renewing; another "
        "process (or a restarted one) takes over a batch whose lease ran out.",
    )
