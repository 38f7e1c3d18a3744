"""Fine-tuning settings, read from the environment (`LLMOPS_FINETUNE_*`)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FinetuneSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_FINETUNE_")

    max_running_jobs: int = Field(1, gt=0, description="Jobs trained at once on this machine.")
    max_attempts: int = Field(
        3, gt=0, description="Starts of one job, counting resumes after its worker died."
    )
    heartbeat_s: float = Field(2.0, gt=0, description="How often a worker says it is alive.")
    stale_after_s: float = Field(
        60.0,
        gt=0,
        description="A running job whose worker has been silent this long is taken as dead, "
        "also when the worker ran on another host.",
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
