"""`POST /v1/explanations`: request and response models. Not an OpenAI API; its shapes follow
the chat and completions requests (`model`, `messages` or `prompt`) and OpenAI's object style."""

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from core.refs import REF_PATTERN

Method = Literal["feature_ablation", "shapley", "lime", "kernel_shap", "integrated_gradients"]
METHODS: tuple[str, ...] = get_args(Method)
Granularity = Literal["tokens", "words", "segments"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)

MAX_PROMPT_CHARS = 16_384
Text = Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]


class ExplainMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer"]
    content: Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS)]


class ExplanationRequest(BaseModel):
    # One of `messages` or `prompt`; an optional field may be left out but is never null.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["messages"]}, {"required": ["prompt"]}]},
    )

    model: Annotated[str, Field(pattern=REF_PATTERN, max_length=256)] = Field(
        description="A model the gateway serves: `demo`, `demo@staging`, `demo:3`, `ft:...`."
    )
    messages: Annotated[list[ExplainMessage], Field(min_length=1)] = Field(  # type: ignore
        None, description="A chat prompt, rendered with the model's chat template."
    )
    prompt: Text = Field(  # type: ignore
        None, description="A plain text prompt (instead of `messages`)."
    )
    target: Text = Field(  # type: ignore
        None,
        description="The answer to explain; by default the model's own greedy answer. Give "
        "another answer to ask why the model would (not) say it.",
    )
    method: Method = "feature_ablation"
    granularity: Granularity = Field(
        "words", description="Features: tokens, words, or segments (whole messages, sentences)."
    )
    baseline: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        "pad", description="What an absent feature's tokens become: pad, unk, or a token."
    )
    n_samples: Annotated[int, Field(ge=1, le=500)] = Field(
        25, description="Perturbations drawn by shapley, lime and kernel_shap."
    )
    n_steps: Annotated[int, Field(ge=2, le=256)] = Field(
        16, description="Integration steps of integrated_gradients."
    )
    max_tokens: Annotated[int, Field(ge=1, le=256)] = Field(
        16, description="Longest generated answer when no target is given."
    )
    top_k: Annotated[int, Field(ge=1, le=50)] = Field(5, description="Top features listed.")
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0

    @model_validator(mode="after")
    def _one_prompt(self) -> "ExplanationRequest":
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of `messages` or `prompt`")
        return self


class TopFeature(BaseModel):
    index: int
    feature: str
    score: float


class ExplanationMetadata(BaseModel):
    samples: int | None = Field(None, description="Perturbations drawn (sampling methods).")
    steps: int | None = Field(None, description="Integration steps (integrated gradients).")
    convergence_delta: float | None = Field(
        None, description="Integrated gradients' largest completeness error per answer token."
    )
    forward_passes: int
    baseline_token_id: int


class FaithfulnessScore(BaseModel):
    k: int = Field(description="Features removed.")
    top_k_drop: float = Field(description="Answer log-probability lost without the top k.")
    random_drop: float = Field(description="The same without k random features (mean).")
    trials: int
    score: float = Field(description="top_k_drop - random_drop: above 0 beats chance.")


class ExplanationUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int = Field(description="Every token the explanation ran through the model.")


class ExplanationResponse(BaseModel):
    id: str
    object: Literal["explanation"] = "explanation"
    created: int
    model: str = Field(description="The version explained, e.g. `demo:3`.")
    method: str
    granularity: str
    input_features: list[str]
    output_tokens: list[str]
    answer: str
    attributions: list[list[float]] | None = Field(
        description="Per output token (rows) and input feature (columns); null for lime and "
        "kernel_shap, which attribute the whole answer only."
    )
    sequence_attributions: list[float] = Field(
        description="Per input feature, to the whole answer's log-probability."
    )
    top_features: list[TopFeature]
    faithfulness: FaithfulnessScore
    metadata: ExplanationMetadata
    seconds: float
    usage: ExplanationUsage
