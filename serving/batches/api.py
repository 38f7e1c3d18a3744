"""OpenAI's Batch API, which the gateway mounts:

    POST /v1/batches                 a JSONL file (purpose `batch`) of requests to one endpoint
    GET /v1/batches                  GET /v1/batches/{id}
    POST /v1/batches/{id}/cancel

The output and error files are read with `GET /v1/files/{id}/content`. `BatchHandlers` on
the application (`app.state.batches`) do the work; the gateway's `BatchRunner` runs them."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from core.callers import Caller, current_caller
from core.http import error_responses
from core.listing import MAX_PAGE, ListPage
from serving.batches.handlers import BatchHandlers
from serving.batches.protocol import BatchObject, BatchRequest

router = APIRouter(
    prefix="/v1", tags=["batches"], responses=error_responses(400, 401, 403, 404, 429)
)


def get_handlers(request: Request) -> BatchHandlers:
    return request.app.state.batches


Handlers = Annotated[BatchHandlers, Depends(get_handlers)]
Who = Annotated[Caller, Depends(current_caller)]


@router.post("/batches")
def create_batch(handlers: Handlers, who: Who, body: BatchRequest) -> BatchObject:
    return handlers.create(who, body)


@router.get("/batches")
def list_batches(
    handlers: Handlers,
    who: Who,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
) -> ListPage[BatchObject]:
    return handlers.list(who, after, limit)


@router.get("/batches/{batch_id}")
def get_batch(handlers: Handlers, who: Who, batch_id: str) -> BatchObject:
    return handlers.get(who, batch_id)


@router.post("/batches/{batch_id}/cancel", responses=error_responses(409))
def cancel_batch(handlers: Handlers, who: Who, batch_id: str) -> BatchObject:
    return handlers.cancel(who, batch_id)
