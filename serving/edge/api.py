"""The edge update channel over HTTP, which the gateway mounts:

    GET /v1/edge/public_key                          the key devices verify bundles with
    GET /v1/edge/bundles/{model}                     the signed manifest of an alias's bundle
    GET /v1/edge/bundles/{version}/files/{sha256}    one of its files, by digest
    GET /v1/edge/device                              the device a key belongs to
    POST /v1/edge/reports                            a device's report (version, status)
    GET|POST /v1/edge/devices, DELETE /v1/edge/devices/{id}    the fleet, for admin keys

`EdgeHandlers` on the application (`app.state.edge`) do the work; see there who may call
what. Every edge request counts against its key's requests per minute (device keys have a
limit by default), so a device stuck in a sync loop cannot flood the gateway."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from core.callers import Caller, admin_caller, current_caller
from core.http import error_responses
from core.listing import MAX_PAGE, ListPage
from core.refs import VERSION_REF_PATTERN
from serving.edge.handlers import EdgeHandlers
from serving.edge.protocol import (
    DEVICE_ID_PATTERN,
    FOLLOW_PATTERN,
    SHA256_PATTERN,
    CreatedDevice,
    DeviceObject,
    DeviceReport,
    DeviceRequest,
    PublicKeyObject,
    SignedBundle,
)


async def count_request(request: Request) -> None:
    """Count the request against its key's rpm (429 with Retry-After beyond it)."""
    gateway = request.app.state.gateway
    key = await gateway.auth.key_async(request)
    if key is not None and key.rpm is not None:
        await gateway.limiter.reserve(key, 0)


router = APIRouter(
    prefix="/v1/edge",
    tags=["edge"],
    responses=error_responses(400, 401, 403, 429),
    dependencies=[Depends(count_request)],
)


def get_handlers(request: Request) -> EdgeHandlers:
    return request.app.state.edge


Handlers = Annotated[EdgeHandlers, Depends(get_handlers)]
Who = Annotated[Caller, Depends(current_caller)]
Admin = Annotated[Caller, Depends(admin_caller)]
Model = Annotated[
    str, PathParam(pattern=FOLLOW_PATTERN, description="What the device follows: demo-onnx@edge.")
]
Version = Annotated[
    str, PathParam(pattern=VERSION_REF_PATTERN, description="The manifest's version, name:N.")
]
DeviceId = Annotated[str, PathParam(pattern=DEVICE_ID_PATTERN)]
BROKEN_STORE = error_responses(500)  # a stored file fails its digest, or the key is unusable


@router.get("/public_key", responses=BROKEN_STORE)
def public_key(handlers: Handlers, _who: Who) -> PublicKeyObject:
    return handlers.public_key()


@router.get("/bundles/{model}", responses={**error_responses(404), **BROKEN_STORE})
def bundle(handlers: Handlers, who: Who, model: Model) -> SignedBundle:
    return handlers.bundle(who, model)


@router.get(
    "/bundles/{version}/files/{sha256}",
    response_class=FileResponse,
    responses={
        **error_responses(404),
        **BROKEN_STORE,
        200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
    },
)
def bundle_file(
    handlers: Handlers,
    who: Who,
    version: Version,
    sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN)],
) -> FileResponse:
    """A file of an ONNX version by its sha256, verified before it is sent."""
    path, name = handlers.file(who, version, sha256)
    return FileResponse(path, filename=name, media_type="application/octet-stream")


@router.get("/device")
def device(handlers: Handlers, who: Who) -> DeviceObject:
    return handlers.me(who)


@router.post("/reports")
def report(handlers: Handlers, who: Who, body: DeviceReport) -> DeviceObject:
    return handlers.report(who, body)


@router.get("/devices")
def list_devices(
    handlers: Handlers,
    _admin: Admin,
    after: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> ListPage[DeviceObject]:
    return handlers.fleet(after, limit)


@router.post("/devices", status_code=201, responses=error_responses(409))
def add_device(handlers: Handlers, _admin: Admin, body: DeviceRequest) -> CreatedDevice:
    return handlers.add(body)


@router.delete("/devices/{device_id}", responses=error_responses(404))
def remove_device(handlers: Handlers, _admin: Admin, device_id: DeviceId) -> DeviceObject:
    return handlers.remove(device_id)
