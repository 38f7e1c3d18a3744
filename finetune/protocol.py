"""OpenAI's files and fine-tuning API, request and response models field by field (see
https://platform.openai.com/docs/api-reference/fine-tuning). Extras are marked as such."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

PURPOSE = "fine-tune"

Metadata = Annotated[
    dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(
        max_length=16,
        description="Up to 16 key-value pairs kept with the object: keys up to 64 characters, "
        "values up to 512.",
    ),
]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Annotated[int, Field(ge=1, le=50)] | Literal["auto"] = Field(
        "auto", description="Passes over the training file."
    )
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        "auto", description="Rows per optimizer step."
    )
    learning_rate_multiplier: Annotated[float, Field(ge=1e-3, le=100.0)] | Literal["auto"] = Field(
        "auto", description="Scales the gateway's base learning rate for LoRA."
    )


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"] = Field(
        "supervised", description="Only supervised fine-tuning is supported."
    )
    supervised: SupervisedMethod | None = None


class JobRequest(BaseModel):
    """`POST /v1/fine_tuning/jobs`; hyperparameters directly or under `method.supervised`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(None, max_length=40, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    method: Method | None = None
    metadata: Metadata | None = None
    integrations: list[dict[str, Any]] | None = Field(
        None,
        # stated in the schema; the service refuses a non-empty list with a message of its own
        json_schema_extra={"maxItems": 0},
        description="Not supported: send none (an empty list or no field).",
    )

    def given_hyperparameters(self) -> Hyperparameters:
        if self.hyperparameters is not None:
            return self.hyperparameters
        supervised = self.method.supervised if self.method else None
        return (supervised.hyperparameters if supervised else None) or Hyperparameters()


class JobHyperparameters(BaseModel):
    """The hyperparameters a job runs with, `auto` resolved; null where the job's kind has no
    such setting (a recipe sets a learning rate, not a multiplier; a search trial takes its
    settings from its study)."""

    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class SupervisedSettings(BaseModel):
    hyperparameters: JobHyperparameters


class JobMethod(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedSettings


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str = "org-llmops"
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    hyperparameters: JobHyperparameters
    training_file: str | None
    validation_file: str | None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None
    error: JobError | None
    seed: int | None
    suffix: str | None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    method: JobMethod


class JobEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    data: dict[str, Any] | None
    type: Literal["message", "metrics"]


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float]
