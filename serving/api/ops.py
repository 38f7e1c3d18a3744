"""Health, readiness and Prometheus metrics, for load balancers and monitoring."""

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel

from core.http import error_response, error_responses
from serving.api.deps import GatewayDep

router = APIRouter(tags=["operations"], responses=error_responses(400))


class Status(BaseModel):
    status: Literal["ok", "ready"]


@router.get("/health")
async def health() -> Status:
    return Status(status="ok")


@router.get("/ready", response_model=Status, responses=error_responses(503))
async def ready(gateway: GatewayDep) -> Response:
    if gateway.is_ready():
        return Response('{"status":"ready"}', media_type="application/json")
    return error_response(503, "the model backend is not ready yet", code="not_ready")


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(gateway: GatewayDep) -> PlainTextResponse:
    """Prometheus' text format."""
    body = await gateway.render_metrics()
    return PlainTextResponse(body, media_type="text/plain; version=0.0.4")
