"""The gateway's protocol models: the OpenAI API's requests and responses, field by field
(see vLLM `entrypoints/openai/protocol`), extras beyond the OpenAI spec marked as such; and
the gateway's own key management API."""

import json
import time
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from serving.keys import MAX_RATE


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """In requests, `additionalProperties: false`: the gateway refuses unknown fields
        (`check_fields`) unless its config says to drop them."""
        schema = handler(core_schema)
        if handler.mode == "validation":
            handler.resolve_ref_schema(schema)["additionalProperties"] = False
        return schema

    def unknown_fields(self, prefix: str = "") -> list[str]:
        """The fields given that this model does not define, here and in the models it holds,
        by their paths (`messages.0.audio`)."""
        found = [prefix + name for name in self.model_extra or {}]
        for name in type(self).model_fields:
            value = getattr(self, name)
            items = enumerate(value) if isinstance(value, list) else [(None, value)]
            for index, item in items:
                if isinstance(item, OpenAIModel):
                    where = name if index is None else f"{name}.{index}"
                    found += item.unknown_fields(f"{prefix}{where}.")
        return found


# -- requests ---------------------------------------------------------------------------------


def _needs(field: str, flag: str) -> dict[str, Any]:
    """JSON Schema for "`field`, when given and not null, needs `flag: true`"."""
    return {
        "if": {"required": [field], "properties": {field: {"not": {"type": "null"}}}},
        "then": {"required": [flag], "properties": {flag: {"const": True}}},
    }


class StreamOptions(OpenAIModel):
    include_usage: StrictBool = False


MAX_STOP = 4  # stop sequences per request, as OpenAI allows
MAX_STOP_LENGTH = 256
MAX_TOKENS = 1_000_000  # far above any model's context: the gateway's own cap applies first
MAX_LOGIT_BIAS = 300  # tokens one request may bias, as OpenAI allows
MAX_TOOLS = 128
Stop = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_LENGTH)]


class SamplingFields(OpenAIModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(json_schema_extra={"allOf": [_needs("stream_options", "stream")]})

    model: str = Field(min_length=1, max_length=256)
    n: int = Field(1, ge=1, le=16)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**53), le=2**53)  # exact in every JSON parser
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP)] | None = Field(
        None, description=f"Up to {MAX_STOP} sequences of up to {MAX_STOP_LENGTH} characters."
    )
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: (
        dict[
            Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")],
            # the range is checked by `_biases`, for a message that names the token
            Annotated[float, WithJsonSchema({"type": "number", "minimum": -100, "maximum": 100})],
        ]
        | None
    ) = Field(
        None,
        max_length=MAX_LOGIT_BIAS,
        description="Token id (as a string) -> a bias from -100 to 100 added to its logit.",
    )
    service_tier: Literal["auto", "default"] | None = Field(
        None, description="Accepted for compatibility; every request gets the same service."
    )
    top_k: int = Field(
        0, ge=-1, description="Extra (as vLLM): sample from the k likeliest; 0 or -1: all."
    )
    min_p: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Extra (as vLLM): drop tokens below min_p x the likeliest's probability.",
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0.0,
        le=2.0,
        description="Extra (as vLLM): > 1 discourages tokens of the prompt and output.",
    )
    min_tokens: int = Field(
        0,
        ge=0,
        le=MAX_TOKENS,
        description="Extra (as vLLM): tokens to generate before the end may come.",
    )
    ignore_eos: StrictBool = Field(
        False, description="Extra (as vLLM): generate past the end-of-sequence token."
    )

    @field_validator("stream_options")
    @classmethod
    def _streamed(cls, options: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if options is not None and info.data.get("stream") is not True:
            raise ValueError("stream_options applies only with stream: true; remove it or stream")
        return options

    @field_validator("logit_bias")
    @classmethod
    def _biases(cls, biases: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (biases or {}).items():
            if not -100 <= bias <= 100:
                raise ValueError(f"the bias of token {token} is {bias}; biases go from -100 to 100")
        return biases

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


MAX_PROMPTS = 32  # prompts in one completions request
MAX_CHOICES = 64  # prompts times n
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    """OpenAI's legacy completions: one prompt or several, as text or as token ids."""

    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | (Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)])
    )
    max_tokens: int | None = Field(
        16, ge=0, le=MAX_TOKENS, description="0 with `echo` scores the prompt, generating nothing."
    )
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: StrictBool = False

    @model_validator(mode="after")
    def _few_choices(self) -> "CompletionRequest":
        if len(self.prompts) * self.n > MAX_CHOICES:
            raise ValueError(
                f"{len(self.prompts)} prompts times n={self.n} is more than {MAX_CHOICES} choices"
            )
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a text or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if isinstance(self.prompt[0], int):
            return [self.prompt]  # type: ignore[list-item]
        return list(self.prompt)  # type: ignore[arg-type]


class TextPart(BaseModel):
    """A content part; text is the only kind these models read."""

    type: Literal["text"]
    text: str


ToolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FunctionCall(OpenAIModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON object, in text.")


class ToolCall(OpenAIModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="An assistant's calls.")
    tool_call_id: str | None = Field(None, description="The call a tool message answers.")

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


class FunctionDefinition(OpenAIModel):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="A JSON schema of the arguments; by default none.",
    )
    strict: bool | None = Field(
        None,
        description="Arguments always follow `parameters` here, whatever `tool_choice`; "
        "enforced by constrained decoding.",
    )

    @field_validator("parameters")
    @classmethod
    def _schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        return check_json_schema(schema)


class ChatTool(OpenAIModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(OpenAIModel):
    name: ToolName
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = Field(None, description="The answer always follows the schema here.")

    @field_validator("schema_")
    @classmethod
    def _schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        return check_json_schema(schema)


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs its json_schema")
        return self

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must follow, if any."""
        if self.type == "json_object":
            return {"type": "object"}
        return self.json_schema.schema_ if self.json_schema else None


MAX_SCHEMA_CHARS = 65_536  # a JSON schema's length as compact JSON
MAX_SCHEMA_DEPTH = 40  # levels of objects and arrays nested in a schema's JSON
MAX_SCHEMA_PROPERTIES = 1000  # properties a schema defines, at all its levels together


def check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` itself if it is within the gateway's bounds on length, nesting and properties;
    ValueError naming the bound it passes if not. Cheap, as it runs while the request body is
    validated on the event loop; whether it is a valid JSON schema is checked off the loop
    (`serving.structured.check_schemas`), as that costs about 0.15 ms per property."""
    length = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
    if length > MAX_SCHEMA_CHARS:
        raise ValueError(
            f"the schema is {length} characters long as JSON; the limit is {MAX_SCHEMA_CHARS}. "
            "Shorten it"
        )
    properties = 0
    stack: list[tuple[dict | list, int]] = [(schema, 1)]
    while stack:  # not recursive: a deep schema must not exhaust the stack
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise ValueError(
                f"the schema nests objects and arrays more than {MAX_SCHEMA_DEPTH} levels deep, "
                "the limit; flatten it"
            )
        if isinstance(node, dict) and isinstance(node.get("properties"), dict):
            properties += len(node["properties"])
            if properties > MAX_SCHEMA_PROPERTIES:
                raise ValueError(
                    f"the schema defines more than {MAX_SCHEMA_PROPERTIES} properties (at all "
                    "levels together), the limit; trim it or split it"
                )
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return schema


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                _needs("stream_options", "stream"),
                _needs("top_logprobs", "logprobs"),
                {
                    "if": {
                        "required": ["tool_choice"],
                        "properties": {"tool_choice": {"not": {"enum": [None, "none", "auto"]}}},
                    },
                    "then": {
                        "required": ["tools"],
                        "properties": {"tools": {"type": "array", "minItems": 1}},
                    },
                },
            ]
        }
    )
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="Deprecated by OpenAI.")
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: StrictBool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="By default 'auto' with tools, 'none' without."
    )
    parallel_tool_calls: StrictBool = True
    store: Literal[False] | None = Field(
        None, description="Chat completions are not stored here; use the Responses API."
    )

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top is not None and info.data.get("logprobs") is not True:
            raise ValueError("top_logprobs needs logprobs: true; set it or remove top_logprobs")
        return top

    @model_validator(mode="after")
    def _tool_choice(self) -> "ChatCompletionRequest":
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) < len(names):
            raise ValueError("tools: two tools have the same name; give each its own")
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not names:
            raise ValueError("tool_choice asks for a tool call, but the request has no tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(
                f"tool_choice names the function {choice.function.name!r}, which is not in "
                f"tools ({', '.join(names)})"
            )
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def calls_tools(self) -> bool:
        """Whether the model is offered tools (and may or must call them)."""
        return bool(self.tools) and self.tool_choice != "none"


# -- responses --------------------------------------------------------------------------------


class Usage(OpenAIModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(OpenAIModel):
    """With `echo`, the prompt's tokens come first; its first token has no log-probability."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(OpenAIModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(OpenAIModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(OpenAIModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(OpenAIModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(OpenAIModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(OpenAIModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaToolCall(OpenAIModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall | None = None


class DeltaMessage(OpenAIModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(OpenAIModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(OpenAIModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmops"
    parent: str | None = Field(None, description="Extra (as vLLM): the base of an adapter.")
    root: str | None = Field(None, description="Extra (as vLLM): the resolved version.")


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- API keys (the gateway's own API, admin keys only) ---------------------------------------


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    models: list[str] = Field(
        default_factory=lambda: ["*"], description="Allowed model names; '*' allows all."
    )
    admin: StrictBool = Field(False, description="May use the registry and key routes.")
    rpm: int | None = Field(None, gt=0, le=MAX_RATE, description="Requests per minute.")
    tpm: int | None = Field(None, gt=0, le=MAX_RATE, description="Tokens per minute.")
    log_traffic: StrictBool = Field(True, description="Whether this key's requests are logged.")


class KeyObject(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    prefix: str = Field(description="The first characters of the secret, to recognise it.")
    models: list[str]
    admin: bool
    rpm: int | None
    tpm: int | None
    log_traffic: bool
    created_at: datetime
    revoked_at: datetime | None
    teach: bool = Field(description="Whether its corrections (`/v1/feedback`) may train models.")
    created_by: str | None = Field(
        description="Who made it: an admin key, or the operator on the command line; null for "
        "keys made before makers were recorded."
    )


class CreatedKey(KeyObject):
    key: str = Field(description="The secret; shown only in this response.")


# -- embeddings -------------------------------------------------------------------------------

MAX_EMBEDDING_INPUTS = 2048  # inputs in one embeddings request, as OpenAI allows
EmbeddingText = Annotated[str, StringConstraints(min_length=1)]


class EmbeddingRequest(OpenAIModel):
    model: str = Field(min_length=1, max_length=256)
    input: (
        EmbeddingText
        | Annotated[list[EmbeddingText], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    ) = Field(description="A text, a list of texts, a list of token ids, or a list of those.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: each vector as little-endian float32 bytes in base64."
    )
    dimensions: int | None = Field(
        None,
        ge=1,
        description="Shorter vectors (truncated and renormalised); only on a model whose "
        "config.json declares Matryoshka dimensions (`matryoshka_dimensions`).",
    )
    user: str | None = Field(None, max_length=256)

    @property
    def inputs(self) -> list[str | list[int]]:
        """The inputs, each a text or a list of token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input[0], int):
            return [self.input]  # type: ignore[list-item]
        return list(self.input)  # type: ignore[arg-type]


class Embedding(OpenAIModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The vector, or its base64 encoding.")


class EmbeddingUsage(OpenAIModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
