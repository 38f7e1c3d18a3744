"""The Responses API: each request answered as a chat completion (so every limit, the traffic
log and both engines apply as they do to chat), its output as Responses items, streamed as
Responses events, and stored with its conversation for `previous_response_id`.

A response is stored only when the request asks (`store`, true by default as in OpenAI's API),
also for a key that opts out of the traffic log: storing it is what its caller asked for, and
what it stores is what the API gives back. Stored responses follow the traffic log's
retention: past it they are not found, and they are deleted at the next store after it (at
most once per `Retention.every_s`)."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime
from typing import Any

from core.callers import Caller
from core.database import utc_now
from serving.generation import Generator, RequestContext, ending_in_error
from serving.protocol import ChatCompletionChunk, ChatCompletionResponse, ToolCall
from serving.responses.protocol import (
    DeletedResponse,
    OutputItem,
    OutputMessage,
    ResponseError,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
)
from serving.responses.store import ResponseStore
from serving.responses.translate import (
    as_messages,
    assistant_message,
    call_item,
    chat_request,
    input_items,
    message_item,
    new_id,
    response_object,
)
from serving.traffic import Retention


class Responses:
    def __init__(self, generator: Generator, store: ResponseStore):
        self.generator = generator
        self.store = store
        traffic = generator.traffic
        self.retention = traffic.retention if traffic is not None else Retention()
        self._next_prune = 0.0

    async def create(
        self, req: ResponsesRequest, ctx: RequestContext
    ) -> ResponseObject | AsyncIterator[bytes]:
        self.generator.check_fields(req)
        items = input_items(req)
        for number, item in enumerate(items):
            self.generator.check_fields(item, f"input.{number}.")
        history: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            _, history = await asyncio.to_thread(
                self.store.get, req.previous_response_id, ctx.caller, self._oldest()
            )
        conversation = history + as_messages(items)
        chat = chat_request(req, conversation)
        response_id, created = new_id("resp"), time.time()
        if req.stream:
            chunks = await self.generator.chat_chunks(chat, ctx)
            return self._stream(req, ctx, response_id, created, conversation, chunks)
        answer = await self.generator.chat(chat, ctx)
        assert isinstance(answer, ChatCompletionResponse)
        choice = answer.choices[0]
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        output: list[OutputItem] = []
        if choice.message.content:
            output.append(message_item(choice.message.content, status))
        output += [call_item(call) for call in choice.message.tool_calls or []]
        response = response_object(
            req, response_id, created, output, answer.usage, choice.finish_reason
        )
        await self._keep(req, ctx, response, conversation)
        return response

    def retrieve(self, response_id: str, caller: Caller) -> ResponseObject:
        return self.store.get(response_id, caller, self._oldest())[0]

    def delete(self, response_id: str, caller: Caller) -> DeletedResponse:
        self.store.delete(response_id, caller)
        return DeletedResponse(id=response_id)

    async def _keep(
        self,
        req: ResponsesRequest,
        ctx: RequestContext,
        response: ResponseObject,
        conversation: list[dict[str, Any]],
    ) -> None:
        if req.store:
            whole = [*conversation, assistant_message(response.output)]
            await asyncio.to_thread(self.store.save, response, ctx.caller.key_id, whole)
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + self.retention.every_s
                await asyncio.to_thread(self.store.prune, self._oldest())

    def _oldest(self) -> datetime:
        """When the oldest response still kept was stored, at the earliest."""
        return utc_now() - self.retention.max_age

    async def _stream(
        self,
        req: ResponsesRequest,
        ctx: RequestContext,
        response_id: str,
        created: float,
        conversation: list[dict[str, Any]],
        chunks: AsyncIterator[ChatCompletionChunk],
    ) -> AsyncIterator[bytes]:
        event = _Events()
        output: list[OutputItem] = []
        usage, finish_reason = None, None
        message: OutputMessage | None = None  # the text item being written

        def snapshot() -> ResponseObject:
            return response_object(req, response_id, created, list(output), usage, None)

        yield event("response.created", response=snapshot())
        yield event("response.in_progress", response=snapshot())
        async with aclosing(chunks), ending_in_error() as failed:  # type: ignore[type-var]
            async for chunk in chunks:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    finish_reason = choice.finish_reason or finish_reason
                    if text := choice.delta.content:
                        if message is None:
                            message = message_item("", "in_progress")
                            output.append(message)
                            for started in _text_started(event, message, len(output) - 1):
                                yield started
                        message.content[0].text += text
                        yield event(
                            "response.output_text.delta",
                            item_id=message.id,
                            output_index=len(output) - 1,
                            content_index=0,
                            delta=text,
                            logprobs=[],
                        )
                    for call in choice.delta.tool_calls or []:
                        if message is not None:
                            for ended in _text_ended(event, message, output, "completed"):
                                yield ended
                            message = None
                        assert call.id is not None and call.function is not None
                        item = call_item(ToolCall(id=call.id, function=call.function))
                        output.append(item)
                        for step in _call_events(event, item, len(output) - 1):
                            yield step
        if failed:
            error = failed[0].error
            response = snapshot().model_copy(
                update={
                    "status": "failed",
                    "error": ResponseError(code=error.code or error.type, message=error.message),
                }
            )
            yield event("response.failed", response=response)
            return
        status = "incomplete" if finish_reason == "length" else "completed"
        if message is not None:
            for ended in _text_ended(event, message, output, status):
                yield ended
        response = response_object(
            req, response_id, created, output, usage, finish_reason or "stop"
        )
        await self._keep(req, ctx, response, conversation)
        yield event(f"response.{status}", response=response)


class _Events:
    """Numbers the events of one stream and writes them as server-sent events."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        body = ResponseEvent(type=kind, sequence_number=self.sequence, **fields)
        self.sequence += 1
        return f"event: {kind}\ndata: {body.model_dump_json(by_alias=True)}\n\n".encode()


def _text_started(event: _Events, message: OutputMessage, index: int) -> list[bytes]:
    empty = message.model_copy(update={"content": []})
    return [
        event("response.output_item.added", output_index=index, item=empty),
        event(
            "response.content_part.added",
            item_id=message.id,
            output_index=index,
            content_index=0,
            part=message.content[0].model_copy(),
        ),
    ]


def _text_ended(
    event: _Events, message: OutputMessage, output: list[OutputItem], status: str
) -> list[bytes]:
    index = output.index(message)
    message.status = status  # type: ignore[assignment]
    part = message.content[0]
    return [
        event(
            "response.output_text.done",
            item_id=message.id,
            output_index=index,
            content_index=0,
            text=part.text,
            logprobs=[],
        ),
        event(
            "response.content_part.done",
            item_id=message.id,
            output_index=index,
            content_index=0,
            part=part,
        ),
        event("response.output_item.done", output_index=index, item=message),
    ]


def _call_events(event: _Events, item: OutputItem, index: int) -> list[bytes]:
    started = item.model_copy(update={"arguments": "", "status": "in_progress"})
    arguments = item.arguments  # type: ignore[union-attr]
    return [
        event("response.output_item.added", output_index=index, item=started),
        event(
            "response.function_call_arguments.delta",
            item_id=item.id,
            output_index=index,
            delta=arguments,
        ),
        event(
            "response.function_call_arguments.done",
            item_id=item.id,
            output_index=index,
            arguments=arguments,
            name=item.name,  # type: ignore[union-attr]
        ),
        event("response.output_item.done", output_index=index, item=item),
    ]
