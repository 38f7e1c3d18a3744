"""The OpenAI API: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/v1/responses`
and `/v1/embeddings`. The `Generator` (with Responses and the `Embedder` on top of it) does
the work; these routes only authenticate, check the request's JSON schemas off the event
loop, and shape the response."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from core.http import error_responses
from serving.api.deps import GatewayDep, KeyDep
from serving.catalog import model_cards
from serving.embeddings import Embedder
from serving.gateway import Gateway
from serving.generation import RequestContext
from serving.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelList,
)
from serving.responses.protocol import DeletedResponse, ResponseObject, ResponsesRequest
from serving.structured import chat_schemas, check_schemas

router = APIRouter(tags=["openai"], responses=error_responses(400, 401, 403))
GENERATION = {
    **error_responses(404, 413, 429, 500, 502, 503),
    200: {
        "description": "The answer, or with `stream` its server-sent events",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
}


@router.get("/v1/models")
def list_models(gateway: GatewayDep, key: KeyDep) -> ModelList:
    cards = model_cards(gateway.registry, gateway.auth.caller_of(key))
    return ModelList(data=[c for c in cards if key is None or key.allows(c.id)])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses=GENERATION,
)
async def chat(gateway: GatewayDep, body: ChatCompletionRequest, request: Request) -> Response:
    ctx = await _context(gateway, request, body.model, "chat")
    await asyncio.to_thread(check_schemas, chat_schemas(body))
    return _respond(await gateway.generator.chat(body, ctx))


@router.post("/v1/completions", response_model=CompletionResponse, responses=GENERATION)
async def completions(gateway: GatewayDep, body: CompletionRequest, request: Request) -> Response:
    ctx = await _context(gateway, request, body.model, "completions")
    return _respond(await gateway.generator.complete(body, ctx))


@router.post("/v1/responses", response_model=ResponseObject, responses=GENERATION)
async def create_response(
    gateway: GatewayDep, body: ResponsesRequest, request: Request
) -> Response:
    ctx = await _context(gateway, request, body.model, "responses")
    await asyncio.to_thread(check_schemas, _responses_schemas(body))
    return _respond(await gateway.responses.create(body, ctx))


@router.get("/v1/responses/{response_id}", responses=error_responses(404))
def retrieve_response(gateway: GatewayDep, key: KeyDep, response_id: str) -> ResponseObject:
    return gateway.responses.retrieve(response_id, gateway.auth.caller_of(key))


@router.delete("/v1/responses/{response_id}", responses=error_responses(404))
def delete_response(gateway: GatewayDep, key: KeyDep, response_id: str) -> DeletedResponse:
    return gateway.responses.delete(response_id, gateway.auth.caller_of(key))


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=error_responses(404, 413, 429, 500, 502, 503),
)
async def embeddings(gateway: GatewayDep, body: EmbeddingRequest, request: Request) -> Response:
    ctx = await _context(gateway, request, body.model, "embeddings")
    return _respond(await Embedder(gateway.generator).embed(body, ctx))


async def _context(gateway: Gateway, request: Request, model: str, endpoint: str) -> RequestContext:
    key = await gateway.auth.key_async(request, model=model)
    return RequestContext(
        request.state.request_id, key, gateway.auth.caller_of(key), endpoint, request.scope["state"]
    )


def _responses_schemas(body: ResponsesRequest) -> list[tuple[str, dict[str, Any]]]:
    found = [(f"tools.{n}.parameters", tool.parameters) for n, tool in enumerate(body.tools)]
    if body.text.format.schema_ is not None:
        found.append(("text.format.schema", body.text.format.schema_))
    return found


def _respond(result: BaseModel | AsyncIterator[bytes]) -> Response:
    """A streamed answer as server-sent events; a whole one serialized by pydantic directly
    (FastAPI's generic encoder costs a noticeable share of a request)."""
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), media_type="application/json")
    return StreamingResponse(result, media_type="text/event-stream")
