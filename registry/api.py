"""The registry over HTTP: a FastAPI router the gateway mounts under `/v1/registry`, for
admin keys only. The `Registry` service does the work (returning entities or raising
`RegistryError`); these routes only translate to and from `registry.protocol`."""

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import ValidationError

from core.callers import Caller, admin_caller
from core.errors import ErrorCode
from core.http import error_responses, install_error_handlers
from core.listing import MAX_PAGE, ListPage, page
from core.refs import ALIAS_PATTERN, NAME_PATTERN, REF_PATTERN
from registry.entities import PromotionStatus, VersionKind
from registry.errors import RegistryError
from registry.protocol import (
    MAX_EVENT_ID,
    MAX_REASON,
    AliasEventObject,
    AliasObject,
    AliasRequest,
    FileObject,
    ModelObject,
    PromoteRequest,
    PromotionRequestBody,
    PromotionRequestObject,
    ReasonRequest,
    RegisterRequest,
    RejectRequest,
    RollbackRequest,
    VerifyResult,
    VersionDetailsObject,
    VersionFields,
    VersionObject,
)
from registry.service import Registry

router = APIRouter(
    prefix="/v1/registry",
    tags=["registry"],
    responses=error_responses(400, 401, 403, 404, 409, 413),
)
Name = Annotated[str, PathParam(pattern=NAME_PATTERN, description="A model's name.")]
AliasName = Annotated[str, PathParam(pattern=ALIAS_PATTERN, description="An alias, e.g. staging.")]
Ref = Annotated[
    str,
    PathParam(
        pattern=REF_PATTERN,
        description="name (its production alias), name:version, name@alias or ft:<base>:...",
    ),
]
VersionRef = Annotated[
    str | None,
    Query(
        pattern=f"^{NAME_PATTERN[1:-1]}:[1-9][0-9]{{0,8}}$",
        description="The last ref of the previous page.",
    ),
]
BROKEN_STORE = error_responses(500)  # the stored files fail their digests


def get_registry(request: Request, caller: Annotated[Caller, Depends(admin_caller)]) -> Registry:
    """The registry, recording the calling key in the audit log."""
    return request.app.state.registry.acting_as(caller.actor, made_by=caller.made_by)


RegistryDep = Annotated[Registry, Depends(get_registry)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Items per page.")]


@router.get("/models")
def list_models(
    registry: RegistryDep,
    q: Annotated[str | None, Query(description="Keep names containing this.")] = None,
    limit: Limit = 20,
    after: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="The last name of the previous page.")
    ] = None,
) -> ListPage[ModelObject]:
    found = registry.list_models(q, limit=limit + 1, after=after)
    held: dict[str, dict[str, int]] = {}
    for alias in registry.aliases():
        held.setdefault(alias.name, {})[alias.alias] = alias.version
    objects = [
        ModelObject.model_validate(m).model_copy(update={"aliases": held.get(m.name, {})})
        for m in found
    ]
    return page(objects, limit, lambda m: m.name)


@router.get("/models/{name}/versions")
def list_versions(
    registry: RegistryDep,
    name: Name,
    kind: VersionKind | None = None,
    tag: Annotated[list[str], Query(description="KEY=VALUE the versions must carry")] = [],  # noqa: B006
    include_archived: bool = False,
    limit: Limit = 20,
    after: VersionRef = None,
) -> ListPage[VersionObject]:
    tags: dict[str, str | None] = dict(t.partition("=")[::2] for t in tag)
    found = registry.list_versions(
        name,
        kind=kind,
        tags=tags,
        include_archived=include_archived,
        limit=limit + 1,
        after=after,
    )
    return page([VersionObject.model_validate(v) for v in found], limit, lambda v: v.ref)


@router.post("/models/{name}/versions", status_code=201)
def register(registry: RegistryDep, name: Name, body: RegisterRequest) -> VersionObject:
    """Register a folder of the server's import root (off unless LLMOPS_IMPORT_ROOT is set)."""
    source = registry.importable(body.source_dir)
    version = registry.register(name, source, **body.model_dump(exclude={"source_dir"}))
    return VersionObject.model_validate(version)


@router.post("/models/{name}/versions/upload", status_code=201)
def register_upload(
    registry: RegistryDep,
    name: Name,
    archive: Annotated[
        UploadFile,
        File(description="A tar (or .tar.gz) of the files.", json_schema_extra={"minLength": 1}),
    ],
    metadata: Annotated[str, Form(description="VersionFields as JSON.")] = "{}",
) -> VersionObject:
    """Register the files of an uploaded tar archive, with the fields in `metadata`."""
    try:
        fields = VersionFields.model_validate_json(metadata)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "metadata"
        raise RegistryError(
            ErrorCode.INVALID, f"metadata: {where}: {first['msg']}", param="metadata"
        ) from None
    version = registry.register_archive(name, archive.file, **fields.model_dump())
    return VersionObject.model_validate(version)


@router.get("/versions/{ref}")
def show(registry: RegistryDep, ref: Ref) -> VersionDetailsObject:
    details = registry.show(ref)
    return VersionDetailsObject(
        **VersionObject.model_validate(details.version).model_dump(exclude={"object"}),
        lineage=[VersionObject.model_validate(p) for p in details.lineage],
        aliases=list(details.aliases),
    )


@router.get("/versions/{ref}/files", responses=BROKEN_STORE)
def list_files(registry: RegistryDep, ref: Ref) -> ListPage[FileObject]:
    manifest = registry.artifacts.load_manifest(registry.resolve(ref).artifact_digest)
    return page([FileObject.model_validate(f) for f in manifest.files], None, lambda f: f.path)


@router.get(
    "/versions/{ref}/files/{path:path}",
    response_class=FileResponse,
    responses={
        **BROKEN_STORE,
        200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
    },
)
def download_file(
    registry: RegistryDep, ref: Ref, path: Annotated[str, PathParam(max_length=1024)]
) -> FileResponse:
    """One file of a version, verified against its digest before it is sent."""
    digest = registry.resolve(ref).artifact_digest
    return FileResponse(
        registry.artifacts.verified_file(digest, path),
        filename=Path(path).name,
        media_type="application/octet-stream",
    )


@router.post("/versions/{ref}/verify", responses=BROKEN_STORE)
def verify(registry: RegistryDep, ref: Ref) -> VerifyResult:
    manifest = registry.verify(ref)
    return VerifyResult(ref=ref, ok=True, files=len(manifest.files), bytes=manifest.total_size)


@router.post("/versions/{ref}/archive")
def archive(registry: RegistryDep, ref: Ref) -> VersionObject:
    return VersionObject.model_validate(registry.archive(ref))


@router.get("/models/{name}/aliases")
def list_aliases(registry: RegistryDep, name: Name) -> ListPage[AliasObject]:
    registry.store.get_model(name)
    aliases = [AliasObject.model_validate(a) for a in registry.aliases(name)]
    return page(aliases, None, lambda a: a.alias)


@router.put("/models/{name}/aliases/{alias}")
def set_alias(
    registry: RegistryDep, name: Name, alias: AliasName, body: AliasRequest
) -> AliasEventObject:
    event = registry.set_alias(
        name, alias, body.version, reason=body.reason, break_glass=body.break_glass_reason or ""
    )
    return AliasEventObject.model_validate(event)


@router.delete("/models/{name}/aliases/{alias}")
def delete_alias(
    registry: RegistryDep,
    name: Name,
    alias: AliasName,
    reason: Annotated[str, Query(max_length=MAX_REASON)] = "",
    break_glass_reason: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_REASON,
            pattern=r"\S",
            description="Why a two-person alias is deleted without a second admin.",
        ),
    ] = None,
) -> AliasEventObject:
    event = registry.delete_alias(name, alias, reason=reason, break_glass=break_glass_reason or "")
    return AliasEventObject.model_validate(event)


@router.post("/models/{name}/aliases/{alias}/promote", responses=error_responses(422))
def promote(
    registry: RegistryDep, name: Name, alias: AliasName, body: PromoteRequest
) -> AliasEventObject:
    forced = body.force_reason is not None
    reason = body.force_reason if forced else body.reason
    event = registry.promote(
        f"{name}:{body.version}",
        alias,
        reason=reason,
        force=forced,
        break_glass=body.break_glass_reason or "",
    )
    return AliasEventObject.model_validate(event)


@router.post("/models/{name}/aliases/{alias}/rollback")
def rollback(
    registry: RegistryDep, name: Name, alias: AliasName, body: RollbackRequest
) -> AliasEventObject:
    event = registry.rollback(
        name, alias, reason=body.reason, break_glass=body.break_glass_reason or ""
    )
    return AliasEventObject.model_validate(event)


RequestId = Annotated[int, PathParam(ge=1, le=MAX_EVENT_ID, description="A request's id.")]


@router.post("/models/{name}/aliases/{alias}/requests", status_code=201)
def request_promotion(
    registry: RegistryDep, name: Name, alias: AliasName, body: PromotionRequestBody
) -> PromotionRequestObject:
    """Ask for a promotion that a second admin approves; the gate judges it now and again
    on approval."""
    request = registry.request_promotion(f"{name}:{body.version}", alias, reason=body.reason)
    return PromotionRequestObject.model_validate(request)


@router.get("/models/{name}/requests")
def list_promotion_requests(
    registry: RegistryDep, name: Name, status: PromotionStatus | None = None
) -> ListPage[PromotionRequestObject]:
    registry.store.get_model(name)
    found = [PromotionRequestObject.model_validate(r) for r in registry.pending(name, status)]
    return page(found, None, lambda r: str(r.id))


@router.post("/models/{name}/requests/{request_id}/approve")
def approve_promotion(
    registry: RegistryDep, name: Name, request_id: RequestId, body: ReasonRequest
) -> AliasEventObject:
    """Approve another admin's request: the alias moves through the gate."""
    registry.promotion_request(name, request_id)
    return AliasEventObject.model_validate(registry.approve(request_id, reason=body.reason))


@router.post("/models/{name}/requests/{request_id}/reject")
def reject_promotion(
    registry: RegistryDep, name: Name, request_id: RequestId, body: RejectRequest
) -> PromotionRequestObject:
    registry.promotion_request(name, request_id)
    return PromotionRequestObject.model_validate(registry.reject(request_id, reason=body.reason))


@router.get("/models/{name}/history")
def history(
    registry: RegistryDep,
    name: Name,
    alias: Annotated[str | None, Query(pattern=ALIAS_PATTERN)] = None,
    limit: Limit = 20,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="The last id of the previous page.")
    ] = None,
) -> ListPage[AliasEventObject]:
    events = registry.history(name, alias, limit=limit + 1, after=after)
    return page([AliasEventObject.model_validate(e) for e in events], limit, lambda e: str(e.id))


def create_app(registry: Registry) -> FastAPI:
    """The registry alone, without authentication (every caller is an admin): for tests and
    for embedding; the gateway mounts `router` behind its API keys instead."""
    app = FastAPI(title="llmops registry")
    app.state.registry = registry
    app.state.authenticate = lambda _request: Caller(None, admin=True, name="local")
    install_error_handlers(app)
    app.include_router(router)
    return app
