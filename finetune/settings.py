"""Fine-tuning settings, read from the environment (`LLMOPS_FINETUNE_*`)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FinetuneSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_FINETUNE_")

    max_running_jobs: int = Field(
        1,
        gt=0,
        description="Jobs trained at once. While several keys have jobs waiting, each gets an "
        "equal share of these slots: a freed slot goes to the waiting key running the fewest.",
    )
    max_attempts: int = Field(
        3, gt=0, description="Starts of one job, counting resumes after its worker died."
    )
    heartbeat_s: float = Field(
        2.0, gt=0, description="How often a worker renews the lease on its job."
    )
    stale_after_s: float = Field(
        60.0,
        gt=0,
        description="How long a job's lease lasts after each renewal: a running job whose "
        "worker has not renewed it for this long is taken as dead, on any host.",
    )
    recover_every_s: float = Field(
        30.0,
        gt=0,
        description="How often the gateway recovers jobs whose worker died and starts queued "
        "ones (so a killed worker does not stall the queue until a restart).",
    )
    max_file_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Largest file accepted by POST /v1/files."
    )
    max_files_per_key: int = Field(100, gt=0, description="Files one API key may store.")
    max_file_bytes_per_key: int = Field(
        2 * 1024**3, gt=0, description="Bytes of files one API key may store."
    )
    max_active_jobs_per_key: int = Field(
        4, gt=0, description="Queued and running jobs one API key may have."
    )
    max_steps_per_job: int = Field(
        100_000,
        gt=0,
        description="Optimizer steps one job may plan (max_steps, or epochs over its rows); "
        "a job over it is refused when submitted.",
    )
    max_job_seconds: float = Field(
        24 * 3600.0,
        gt=0,
        description="Seconds one job may train, over all its attempts; a job over it fails.",
    )
