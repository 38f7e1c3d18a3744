"""`POST /v1/feedback` (a rating and/or a corrected answer for a request id) and
`GET /v1/feedback`, which the gateway mounts; `app.state.feedback` does the work."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from core.callers import Caller, current_caller
from core.http import error_responses
from core.listing import MAX_PAGE, ListPage
from evals.feedback.protocol import REQUEST_ID_PATTERN, FeedbackObject, FeedbackRequest
from evals.feedback.service import FeedbackService

router = APIRouter(prefix="/v1", tags=["feedback"], responses=error_responses(400, 401, 403, 404))


def get_service(request: Request) -> FeedbackService:
    return request.app.state.feedback


Service = Annotated[FeedbackService, Depends(get_service)]
Who = Annotated[Caller, Depends(current_caller)]


@router.post("/feedback")
async def give_feedback(body: FeedbackRequest, service: Service, who: Who) -> FeedbackObject:
    return await asyncio.to_thread(service.give, who, body)


@router.get("/feedback")
def list_feedback(
    service: Service,
    who: Who,
    request_id: Annotated[str | None, Query(pattern=REQUEST_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
) -> ListPage[FeedbackObject]:
    return service.list_feedback(who, request_id=request_id, limit=limit)
