"""Health, readiness and Prometheus metrics, for load balancers and monitoring."""

from fastapi import APIRouter
from fastapi.responses import Response

from core.http import error_response
from serving.api.deps import GatewayDep

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", response_model=None)
async def ready(gateway: GatewayDep) -> Response:
    if gateway.is_ready():
        return Response('{"status":"ready"}', media_type="application/json")
    return error_response(503, "the model backend is not ready yet", code="not_ready")


@router.get("/metrics", response_class=Response)
async def metrics(gateway: GatewayDep) -> Response:
    return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")
