"""The registry over HTTP: a FastAPI router the gateway mounts under `/v1/registry`.

Errors use the OpenAI envelope `{"error": {"message", "type", "param", "code"}}`.
"""

import logging
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.entities import VersionKind
from registry.errors import ErrorCode, RegistryError
from registry.service import Registry

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/registry", tags=["registry"])


class ApiError(Exception):
    """A request an HTTP route refuses or cannot serve, as the OpenAI envelope; the message
    reaches the client, so it says what was wrong and what to do."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


def error_response(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> JSONResponse:
    """The OpenAI error envelope with its HTTP status."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status in (401, 403):
        kind = "authentication_error" if status == 401 else "permission_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


async def registry_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RegistryError)
    code = "model_not_found" if exc.code is ErrorCode.NOT_FOUND else exc.code.value.lower()
    return error_response(exc.http_status, exc.message, code=code, param=exc.param)


async def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    response = error_response(exc.status, exc.message, code=exc.code, param=exc.param)
    response.headers.update(exc.headers)
    return response


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
    elif param is None:
        message = "the request body must be a JSON object; see the API reference for its fields"
    else:
        message = f"{param}: {first.get('msg', 'invalid value')}"
    return error_response(400, message, code="invalid_request", param=param)


async def http_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    return error_response(exc.status_code, str(exc.detail), code=code)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        500, "internal error; the server log has the details", code="internal_error"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map every error a route can raise to the OpenAI envelope; no traceback reaches a client."""
    app.add_exception_handler(RegistryError, registry_error_handler)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


class RegisterRequest(BaseModel):
    source_dir: str = Field(description="Directory on the server holding the version's files.")
    kind: VersionKind = VersionKind.BASE
    format: str = "hf-safetensors"
    parent: str | None = Field(None, description="Reference of the version this one derives from.")
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    recipe_digest: str | None = None
    dataset_digests: list[str] = Field(default_factory=list)
    source: str = ""
    description: str = ""
    allow_pickle: bool = False


class AliasRequest(BaseModel):
    version: int = Field(ge=1)
    reason: str = ""


class PromoteRequest(AliasRequest):
    force: bool = Field(False, description="Override a failing gate; needs a reason.")


class ReasonRequest(BaseModel):
    reason: str = ""


def _list(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": data}


@router.get("/models")
def list_models(registry: RegistryDep, q: str | None = None) -> dict[str, Any]:
    aliases = registry.aliases()
    versions = registry.list_versions()
    return _list(
        [
            {
                "name": m.name,
                "description": m.description,
                "created_at": m.created_at.isoformat(),
                "versions": [v.version for v in versions if v.name == m.name],
                "aliases": {a.alias: a.version for a in aliases if a.name == m.name},
            }
            for m in registry.list_models(q)
        ]
    )


@router.get("/models/{name}/versions")
def list_versions(
    registry: RegistryDep,
    name: str,
    kind: VersionKind | None = None,
    tag: Annotated[list[str], Query(description="KEY=VALUE the versions must carry")] = [],  # noqa: B006
    include_archived: bool = False,
) -> dict[str, Any]:
    tags = dict(t.partition("=")[::2] for t in tag)
    versions = registry.list_versions(name, kind=kind, tags=tags, include_archived=include_archived)
    return _list([v.to_dict() for v in versions])


@router.post("/models/{name}/versions", status_code=201)
def register(registry: RegistryDep, name: str, body: RegisterRequest) -> dict[str, Any]:
    return registry.register(
        name, Path(body.source_dir), **body.model_dump(exclude={"source_dir"})
    ).to_dict()


@router.get("/versions/{ref}")
def show(registry: RegistryDep, ref: str) -> dict[str, Any]:
    details = registry.show(ref)
    return {
        **details.version.to_dict(),
        "lineage": [p.to_dict() for p in details.lineage],
        "aliases": list(details.aliases),
    }


@router.get("/versions/{ref}/files")
def list_files(registry: RegistryDep, ref: str) -> dict[str, Any]:
    manifest = registry.artifacts.load_manifest(registry.resolve(ref).artifact_digest)
    return _list([{"path": f.path, "sha256": f.sha256, "size": f.size} for f in manifest.files])


@router.get("/versions/{ref}/files/{path:path}")
def download_file(registry: RegistryDep, ref: str, path: str) -> FileResponse:
    """One file of a version, verified against its digest before it is sent."""
    digest = registry.resolve(ref).artifact_digest
    return FileResponse(registry.artifacts.verified_file(digest, path), filename=Path(path).name)


@router.post("/versions/{ref}/verify")
def verify(registry: RegistryDep, ref: str) -> dict[str, Any]:
    manifest = registry.verify(ref)
    return {"ref": ref, "ok": True, "files": len(manifest.files), "bytes": manifest.total_size}


@router.post("/versions/{ref}/archive")
def archive(registry: RegistryDep, ref: str) -> dict[str, Any]:
    return registry.archive(ref).to_dict()


@router.get("/models/{name}/aliases")
def list_aliases(registry: RegistryDep, name: str) -> dict[str, Any]:
    registry.store.get_model(name)
    return _list([a.to_dict() for a in registry.aliases(name)])


@router.put("/models/{name}/aliases/{alias}")
def set_alias(registry: RegistryDep, name: str, alias: str, body: AliasRequest) -> dict[str, Any]:
    return registry.set_alias(name, alias, body.version, reason=body.reason).to_dict()


@router.delete("/models/{name}/aliases/{alias}")
def delete_alias(registry: RegistryDep, name: str, alias: str, reason: str = "") -> dict[str, Any]:
    return registry.delete_alias(name, alias, reason=reason).to_dict()


@router.post("/models/{name}/aliases/{alias}/promote")
def promote(registry: RegistryDep, name: str, alias: str, body: PromoteRequest) -> dict[str, Any]:
    return registry.promote(
        f"{name}:{body.version}", alias, reason=body.reason, force=body.force
    ).to_dict()


@router.post("/models/{name}/aliases/{alias}/rollback")
def rollback(registry: RegistryDep, name: str, alias: str, body: ReasonRequest) -> dict[str, Any]:
    return registry.rollback(name, alias, reason=body.reason).to_dict()


@router.get("/models/{name}/history")
def history(registry: RegistryDep, name: str, alias: str | None = None) -> dict[str, Any]:
    return _list([e.to_dict() for e in registry.history(name, alias)])


def create_app(registry: Registry) -> FastAPI:
    """A standalone app serving only the registry (the gateway mounts `router` itself)."""
    app = FastAPI(title="llmops registry")
    app.state.registry = registry
    install_error_handlers(app)
    app.include_router(router)
    return app
