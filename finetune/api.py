"""OpenAI's files and fine-tuning jobs API, which the gateway mounts:

    POST /v1/files                       multipart `file` + `purpose=fine-tune`, validated
    GET|DELETE /v1/files/{id}            GET /v1/files (after, limit, order, purpose)
    GET /v1/files/{id}/content           the file's bytes (uploads, batch outputs)
    POST /v1/fine_tuning/jobs            GET /v1/fine_tuning/jobs (cursor pagination)
    GET /v1/fine_tuning/jobs/{id}        POST /v1/fine_tuning/jobs/{id}/cancel
    GET /v1/fine_tuning/jobs/{id}/events GET /v1/fine_tuning/jobs/{id}/checkpoints

The `FineTuningService` on the application (`app.state.fine_tuning`) does the work; a job's
`fine_tuned_model` (`ft:<base>:<suffix>:<job-id>`) is servable as soon as it succeeds."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse

from core.callers import Caller, current_caller
from core.http import error_responses
from core.listing import MAX_PAGE, ListPage
from finetune.files import Order
from finetune.protocol import (
    CheckpointObject,
    FileDeleted,
    FileObject,
    FineTuningJob,
    JobEventObject,
    JobRequest,
)
from finetune.service import FineTuningService

router = APIRouter(
    prefix="/v1", tags=["fine-tuning"], responses=error_responses(400, 401, 403, 404, 413, 429)
)


def get_service(request: Request) -> FineTuningService:
    return request.app.state.fine_tuning


Service = Annotated[FineTuningService, Depends(get_service)]
Who = Annotated[Caller, Depends(current_caller)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
After = Annotated[str | None, Query(max_length=64, description="The `last_id` of the page before.")]
MAX_FILES_PAGE = 10_000  # as OpenAI's


@router.post("/files")
async def upload_file(
    service: Service,
    who: Who,
    file: Annotated[UploadFile, File(json_schema_extra={"minLength": 1})],
    purpose: Annotated[
        Literal["fine-tune", "batch"],
        Form(description="fine-tune: chat JSONL, checked now; batch: requests for /v1/batches."),
    ],
) -> FileObject:
    return await service.upload(who, file, purpose)


@router.get("/files")
def list_files(
    service: Service,
    who: Who,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FILES_PAGE)] = MAX_FILES_PAGE,
    order: Annotated[Order, Query(description="By creation time: newest first (desc).")] = "desc",
    purpose: Annotated[
        str | None, Query(max_length=32, description="Only files of this purpose.")
    ] = None,
) -> ListPage[FileObject]:
    return service.list_files(who, after=after, limit=limit, order=order, purpose=purpose)


@router.get("/files/{file_id}")
def get_file(service: Service, who: Who, file_id: str) -> FileObject:
    return service.get_file(who, file_id)


@router.get(
    "/files/{file_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}},
)
def file_content(service: Service, who: Who, file_id: str) -> FileResponse:
    return FileResponse(service.file_path(who, file_id), media_type="application/jsonl")


@router.delete("/files/{file_id}")
def delete_file(service: Service, who: Who, file_id: str) -> FileDeleted:
    return service.delete_file(who, file_id)


@router.post("/fine_tuning/jobs")
def create_job(service: Service, who: Who, body: JobRequest) -> FineTuningJob:
    return service.create_job(who, body)


@router.get("/fine_tuning/jobs")
def list_jobs(
    service: Service, who: Who, after: After = None, limit: Limit = 20
) -> ListPage[FineTuningJob]:
    return service.list_jobs(who, after, limit)


@router.get("/fine_tuning/jobs/{job_id}")
def get_job(service: Service, who: Who, job_id: str) -> FineTuningJob:
    return service.get_job(who, job_id)


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(service: Service, who: Who, job_id: str) -> FineTuningJob:
    return service.cancel_job(who, job_id)


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(
    service: Service, who: Who, job_id: str, after: After = None, limit: Limit = 20
) -> ListPage[JobEventObject]:
    return service.list_events(who, job_id, after, limit)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(
    service: Service, who: Who, job_id: str, after: After = None, limit: Limit = 10
) -> ListPage[CheckpointObject]:
    return service.list_checkpoints(who, job_id, after, limit)
