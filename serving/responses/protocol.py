"""The Responses API's requests, objects and stream events, field by field as OpenAI defines
them (the `openai` SDK's `types/responses`), for function tools and text in and out."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from serving.protocol import (
    MAX_TOKENS,
    MAX_TOOLS,
    OpenAIModel,
    ToolName,
    check_json_schema,
)

# -- requests ---------------------------------------------------------------------------------


class InputText(OpenAIModel):
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(OpenAIModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(OpenAIModel):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(OpenAIModel):
    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem
ITEM_TYPES = ("message", "function_call", "function_call_output")


class FunctionTool(OpenAIModel):
    type: Literal["function"]
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema(self) -> "FunctionTool":
        check_json_schema(self.parameters)
        return self


class FunctionChoice(OpenAIModel):
    type: Literal["function"]
    name: str


class TextFormat(OpenAIModel):
    model_config = ConfigDict(extra="allow", serialize_by_alias=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: ToolName | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema(self) -> "TextFormat":
        if self.type == "json_schema":
            if self.schema_ is None or self.name is None:
                raise ValueError("text.format of type json_schema needs a name and a schema")
            check_json_schema(self.schema_)
        return self


class TextConfig(OpenAIModel):
    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesRequest(OpenAIModel):
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"required": ["tool_choice"], "properties": {"tool_choice": {"type": "object"}}},
            "then": {"required": ["tools"], "properties": {"tools": {"minItems": 1}}},
        }
    )
    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]] = Field(
        description="Text, or items: messages, function calls and their outputs."
    )
    instructions: str | None = None
    previous_response_id: str | None = Field(None, max_length=64)
    store: StrictBool = Field(
        True,
        description="Keep the response and its conversation (for retrieval and "
        "previous_response_id) until the traffic log's retention ends, also for keys that "
        "opt out of the traffic log; false keeps nothing of it.",
    )
    stream: StrictBool = False
    text: TextConfig = Field(default_factory=TextConfig)
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] = Field(default_factory=list)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice = "auto"
    parallel_tool_calls: StrictBool = True
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = Field(None, max_length=16)

    @model_validator(mode="after")
    def _tool_choice(self) -> "ResponsesRequest":
        names = [t.name for t in self.tools]
        if isinstance(self.tool_choice, FunctionChoice) and self.tool_choice.name not in names:
            raise ValueError(
                f"tool_choice names the function {self.tool_choice.name!r}, which is not in "
                f"tools ({', '.join(names)})"
            )
        return self


# -- objects ----------------------------------------------------------------------------------


class OutputText(OpenAIModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(OpenAIModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class OutputFunctionCall(OpenAIModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    """Why a response failed (OpenAI's `code` and `message`)."""

    code: str
    message: str


class ResponseObject(OpenAIModel):
    id: str
    object: Literal["response"] = "response"
    created_at: float
    completed_at: float | None = None
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    text: TextConfig
    tools: list[FunctionTool]
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice
    parallel_tool_calls: bool
    max_output_tokens: int | None = None
    temperature: float
    top_p: float
    store: bool
    metadata: dict[str, str] | None = None
    user: str | None = None
    usage: ResponseUsage | None = None
    incomplete_details: IncompleteDetails | None = None
    error: ResponseError | None = None


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


# -- stream events ----------------------------------------------------------------------------


class ResponseEvent(BaseModel):
    """One server-sent event of a streamed response; `type` names it and the rest of the
    fields are the event's own, as OpenAI's event types define them."""

    model_config = {"extra": "allow"}

    type: str
    sequence_number: int
