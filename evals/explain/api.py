"""`POST /v1/explanations`, which the gateway mounts: why did a served version answer as it
did? The `ExplanationService` on the application (`app.state.explanations`) does the work."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from core.callers import Caller, current_caller
from core.http import error_responses
from evals.explain.protocol import ExplanationRequest, ExplanationResponse
from evals.explain.service import ExplanationService

router = APIRouter(
    prefix="/v1",
    tags=["explanations"],
    responses=error_responses(400, 401, 403, 404, 413, 429, 503),
)


def get_service(request: Request) -> ExplanationService:
    return request.app.state.explanations


@router.post("/explanations")
async def create_explanation(
    body: ExplanationRequest,
    service: Annotated[ExplanationService, Depends(get_service)],
    who: Annotated[Caller, Depends(current_caller)],
    request: Request,
) -> ExplanationResponse:
    return await service.explain(body, who, request.is_disconnected)
