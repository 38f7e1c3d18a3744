"""The gateway's Evals API, request and response models field by field as OpenAI's Evals API
(https://platform.openai.com/docs/api-reference/evals): evals, their runs, and the runs'
output items. Extras are marked as such.

How the stack's evaluations map onto it:

- An **eval** is a suite, a YAML file in the suites folder; its id is the file's name
  (`demo-skills`). Evals are not created over HTTP. Its `testing_criteria` are the metrics of
  its tasks, one per task and metric, named `task/metric`: `exact_match` is OpenAI's
  `string_check` (`eq`, both sides stripped of surrounding spaces); every other metric is a
  criterion of the extra type `metric`, with a `pass_threshold` (1.0) for the metrics that
  score an example 0 or 1 (`normalized_match`, `choice_accuracy`) and none for those that
  measure (`rouge_l`, `perplexity`, `latency_s`, `completion_tokens`, plugins).
- A **run** scores the suite's own data on a registry model (`data_source.type` is
  `completions`, with `model`: `demo`, `demo@staging`, `demo:2`, `ft:...`); the version the
  model resolved to when the run started is the one scored. An example passes when every
  grading criterion of its task passes; `result_counts` and `per_testing_criteria_results`
  count examples. The stack's metrics with their 95% intervals are the extra `metrics`.
- An **output item** is one example of a finished run: its prompt, reference and answer."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from core.refs import REF_PATTERN

RUN_ID_PATTERN = r"^evalrun-[0-9a-f]{24}$"
OUTPUT_ITEM_ID_PATTERN = r"^outputitem-[0-9a-f]{24}-[0-9]{1,9}$"

RunStatusName = Literal["queued", "in_progress", "completed", "canceled", "failed"]
Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64)],
        Annotated[str, StringConstraints(max_length=512)],
    ],
    Field(max_length=16),
]

# -- evals -----------------------------------------------------------------------------------


class CustomDataSourceConfig(BaseModel):
    """The shape of a suite's items (`item`) and of the answers scored (`sample`)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    type: Literal["custom"] = "custom"
    schema_: dict[str, Any] = Field(alias="schema", description="JSON schema of item and sample.")


class StringCheckCriterion(BaseModel):
    """`exact_match`: the answer equals the reference (both stripped of surrounding spaces)."""

    type: Literal["string_check"] = "string_check"
    name: str = Field(description="`task/metric`, as the run's metrics are named.")
    input: str = "{{sample.output_text}}"
    reference: str = "{{item.reference}}"
    operation: Literal["eq"] = "eq"


class MetricCriterion(BaseModel):
    """Extra: a metric of the stack (`evals.metrics`) that is no OpenAI grader."""

    type: Literal["metric"] = "metric"
    name: str = Field(description="`task/metric`, as the run's metrics are named.")
    metric: str = Field(description="The metric's name in the suite.")
    pass_threshold: float | None = Field(
        description="An example passes from this score on; null for metrics that measure "
        "without grading (they count towards no pass or fail)."
    )
    higher_is_better: bool


TestingCriterion = Annotated[StringCheckCriterion | MetricCriterion, Field(discriminator="type")]


class GenerationSettings(BaseModel):
    max_tokens: int
    temperature: float
    stop: list[str]


class EvalTask(BaseModel):
    """Extra: a task of the suite."""

    name: str
    description: str
    examples: int
    metrics: list[str]
    generation: GenerationSettings


class EvalObject(BaseModel):
    id: str = Field(description="The suite's file name without .yaml.")
    object: Literal["eval"] = "eval"
    name: str = Field(description="The suite's name.")
    created_at: int = Field(description="When the suite's file was last written.")
    data_source_config: CustomDataSourceConfig
    testing_criteria: list[TestingCriterion]
    metadata: dict[str, str] | None = None
    # extras
    description: str = Field(description="Extra: the suite's description.")
    digest: str = Field(description="Extra: of the suite's settings and every example.")
    tasks: list[EvalTask] = Field(description="Extra: the suite's tasks.")


# -- runs ------------------------------------------------------------------------------------

_NOT_SUPPORTED = {
    "source": "the data of a run is its eval's suite",
    "input_messages": "the prompts are the suite's",
    "sampling_params": "each task of the suite sets its generation settings",
}


class CompletionsRunDataSource(BaseModel):
    """What a run scores: a registry model answering the suite's prompts through its chat
    template (in the gateway's process). OpenAI's `source`, `input_messages` and
    `sampling_params` are not taken: the suite sets them."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["completions"] = Field(description="Only `completions` is supported.")
    model: Annotated[str, StringConstraints(max_length=256, pattern=REF_PATTERN)] = Field(
        description="`demo` (its production alias), `demo@staging`, `demo:2`, `ft:...`."
    )

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, why in _NOT_SUPPORTED.items():
                if name in data:
                    raise ValueError(f"`{name}` is not supported: {why}; leave it out")
        return data


class RunRequest(BaseModel):
    """`POST /v1/evals/{eval_id}/runs`."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        None, description="Default: `<eval> on <model>`."
    )
    metadata: Metadata | None = None
    data_source: CompletionsRunDataSource


class RunDataSource(BaseModel):
    type: Literal["completions"] = "completions"
    model: str
    source: None = Field(None, description="Always null: the data is the eval's suite.")


class ResultCounts(BaseModel):
    total: int = Field(description="Examples scored (0 until the run completes).")
    errored: int = Field(description="Always 0: an error fails the whole run.")
    failed: int
    passed: int


class PerModelUsage(BaseModel):
    model_name: str = Field(description="The version scored, e.g. `demo:2`.")
    invocation_count: int = Field(description="Answers generated.")
    prompt_tokens: int | None = Field(description="Not recorded: null.")
    completion_tokens: int
    total_tokens: int | None = Field(description="Not recorded: null.")
    cached_tokens: int = 0


class PerTestingCriteriaResult(BaseModel):
    testing_criteria: str
    passed: int
    failed: int


class EvalApiError(BaseModel):
    code: str
    message: str


class MetricInterval(BaseModel):
    value: float = Field(description="The mean over the task's examples.")
    low: float = Field(description="Lower end of the 95% bootstrap interval.")
    high: float = Field(description="Upper end of the 95% bootstrap interval.")


class EvalRunObject(BaseModel):
    id: str
    object: Literal["eval.run"] = "eval.run"
    eval_id: str
    name: str
    status: RunStatusName
    model: str = Field(description="The model as asked, e.g. `demo@staging`.")
    created_at: int
    result_counts: ResultCounts
    per_model_usage: list[PerModelUsage]
    per_testing_criteria_results: list[PerTestingCriteriaResult]
    data_source: RunDataSource
    error: EvalApiError | None
    report_url: str | None = Field(None, description="Always null: there is no dashboard.")
    metadata: dict[str, str] | None
    # extras
    version: str | None = Field(description="Extra: the registry version scored, `demo:2`.")
    suite_digest: str = Field(description="Extra: the digest of the suite as it was scored.")
    metrics: dict[str, MetricInterval] = Field(
        description="Extra: `task/metric` -> the mean with its 95% interval (when completed)."
    )
    progress: float | None = Field(
        description="Extra: the share of the run's work done, while this gateway runs it."
    )
    finished_at: int | None = Field(description="Extra: when it completed, failed or stopped.")


# -- output items ----------------------------------------------------------------------------


class ChatMessage(BaseModel):
    role: str
    content: str


class SampleUsage(BaseModel):
    prompt_tokens: int | None = Field(description="Not recorded: null.")
    completion_tokens: int
    total_tokens: int | None = Field(description="Not recorded: null.")
    cached_tokens: int = 0


class Sample(BaseModel):
    input: list[ChatMessage]
    output: list[ChatMessage]
    model: str
    finish_reason: str | None = Field(None, description="Not recorded: null.")
    max_completion_tokens: int | None = Field(
        description="The task's `max_tokens` (null when the suite changed since the run)."
    )
    temperature: float | None = Field(description="The task's (null as above).")
    top_p: float | None = Field(None, description="Not set by suites: null.")
    seed: int | None = Field(None, description="Not set by suites: null.")
    usage: SampleUsage | None
    error: EvalApiError | None = None
    # extras
    latency_s: float | None = Field(description="Extra: what the answer waited for.")


class DatasourceItem(BaseModel):
    id: str = Field(description="`task/row` in the suite.")
    task: str
    messages: list[ChatMessage] = Field(description="The prompt.")
    reference: str
    choices: list[str] | None = None
    answer: int | None = Field(None, description="The index of the right choice.")


class GraderResult(BaseModel):
    name: str = Field(description="The testing criterion, `task/metric`.")
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None = None


class OutputItemObject(BaseModel):
    id: str
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    run_id: str
    eval_id: str
    created_at: int
    status: Literal["pass", "fail"]
    datasource_item_id: int = Field(description="The example's position in the run.")
    datasource_item: DatasourceItem
    results: list[GraderResult] = Field(description="One per grading criterion of its task.")
    sample: Sample
    # extras
    scores: dict[str, float] = Field(description="Extra: every metric's score of the example.")
