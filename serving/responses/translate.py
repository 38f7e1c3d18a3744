"""Responses on top of chat completions: a Responses request (with the conversation of the
response it continues) as a chat request, and a chat answer as the Responses output items."""

import time
import uuid
from typing import Any

from pydantic import ValidationError

from serving.errors import bad_request
from serving.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ChatTool,
    FunctionCall,
    FunctionDefinition,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    Usage,
)
from serving.responses.protocol import (
    ITEM_TYPES,
    FunctionCallItem,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputItem,
    MessageItem,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)

Messages = list[dict[str, Any]]  # chat messages as OpenAI's chat API spells them


def input_items(req: ResponsesRequest) -> list[InputItem]:
    """The request's input as typed items; a 400 naming the first item that is not one."""
    if isinstance(req.input, str):
        return [MessageItem(role="user", content=req.input)]
    if not req.input:
        raise bad_request("input is empty; send text or at least one item", param="input")
    items: list[InputItem] = []
    kinds = {"message": MessageItem, "function_call": FunctionCallItem}
    kinds["function_call_output"] = FunctionCallOutputItem
    for number, raw in enumerate(req.input):
        kind = raw.get("type", "message" if "role" in raw else None)
        if kind not in ITEM_TYPES:
            raise bad_request(
                f"input.{number}.type {kind!r} is not an item type this gateway takes; use "
                f"{', '.join(ITEM_TYPES)}",
                param=f"input.{number}.type",
            )
        try:
            items.append(kinds[kind].model_validate(raw))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in (f"input.{number}", *first["loc"]))
            raise bad_request(f"{where}: {first['msg']}", param=where) from None
    return items


def as_messages(items: list[InputItem]) -> Messages:
    """Input items as chat messages: consecutive function calls become one assistant message
    with several tool calls, a function call's output a tool message."""
    messages: Messages = []
    for item in items:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        else:
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    return messages


def chat_request(req: ResponsesRequest, conversation: Messages) -> ChatCompletionRequest:
    """The chat request that answers `req`, whose whole conversation is `conversation`."""
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    text = req.text.format
    response_format = None
    if text.type == "json_object":
        response_format = ResponseFormat(type="json_object")
    elif text.type == "json_schema":
        assert text.name is not None and text.schema_ is not None
        response_format = ResponseFormat(
            type="json_schema",
            json_schema=JsonSchemaFormat(name=text.name, schema=text.schema_, strict=text.strict),
        )
    choice = req.tool_choice
    if not isinstance(choice, str):
        choice = NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
    tools = [
        ChatTool(
            type="function",
            function=FunctionDefinition(
                name=t.name, description=t.description, parameters=t.parameters, strict=t.strict
            ),
        )
        for t in req.tools
    ]
    try:
        return ChatCompletionRequest(
            model=req.model,
            messages=[ChatMessage.model_validate(m) for m in system + conversation],
            max_completion_tokens=req.max_output_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            user=req.user,
            tools=tools or None,
            tool_choice=choice if tools else None,
            parallel_tool_calls=req.parallel_tool_calls,
            response_format=response_format,
            stream=req.stream,
            stream_options={"include_usage": True} if req.stream else None,
        )
    except ValidationError as err:  # what the request items say cannot be a chat
        first = err.errors()[0]
        raise bad_request(f"input: {first['msg']}", param="input") from None


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def message_item(text: str, status: str = "completed") -> OutputMessage:
    return OutputMessage(id=new_id("msg"), status=status, content=[OutputText(text=text)])


def call_item(call: ToolCall) -> OutputFunctionCall:
    return OutputFunctionCall(
        id=new_id("fc"),
        call_id=call.id,
        name=call.function.name,
        arguments=call.function.arguments,
        status="completed",
    )


def assistant_message(output: list[OutputItem]) -> dict[str, Any]:
    """The output items as the assistant's chat message, for the next turn's conversation."""
    text = "".join(
        part.text for item in output if isinstance(item, OutputMessage) for part in item.content
    )
    calls = [
        ToolCall(id=i.call_id, function=FunctionCall(name=i.name, arguments=i.arguments))
        for i in output
        if isinstance(i, OutputFunctionCall)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [c.model_dump() for c in calls]
    return message


def response_object(
    req: ResponsesRequest,
    response_id: str,
    created_at: float,
    output: list[OutputItem],
    usage: Usage | None,
    finish_reason: str | None,
) -> ResponseObject:
    """The response; `finish_reason` None while it is still being generated."""
    if finish_reason is None:
        status, incomplete = "in_progress", None
    elif finish_reason == "length":
        status, incomplete = "incomplete", IncompleteDetails(reason="max_output_tokens")
    else:
        status, incomplete = "completed", None
    return ResponseObject(
        id=response_id,
        created_at=created_at,
        completed_at=time.time() if finish_reason is not None else None,
        status=status,
        model=req.model,
        output=output,
        instructions=req.instructions,
        previous_response_id=req.previous_response_id,
        text=req.text,
        tools=req.tools,
        tool_choice=req.tool_choice,
        parallel_tool_calls=req.parallel_tool_calls,
        max_output_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        store=req.store,
        metadata=req.metadata,
        user=req.user,
        usage=None
        if usage is None
        else ResponseUsage(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        ),
        incomplete_details=incomplete,
    )
