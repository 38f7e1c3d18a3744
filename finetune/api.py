"""OpenAI's files and fine-tuning jobs API, served by the gateway.

    POST /v1/files                       multipart `file` + `purpose=fine-tune`, validated
    GET|DELETE /v1/files/{id}            GET /v1/files
    POST /v1/fine_tuning/jobs            GET /v1/fine_tuning/jobs (cursor pagination)
    GET /v1/fine_tuning/jobs/{id}        POST /v1/fine_tuning/jobs/{id}/cancel
    GET /v1/fine_tuning/jobs/{id}/events GET /v1/fine_tuning/jobs/{id}/checkpoints

A job becomes a recipe (LoRA defaults, the API's hyperparameters) run by the job runner; its
`fine_tuned_model` (`ft:<base>:<suffix>:<job-id>`) is servable as soon as it succeeds."""

import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from finetune.data import DataError, read_rows
from finetune.jobs import Job, StoredFile
from finetune.recipe import RecipeError, parse_recipe
from finetune.registration import fine_tuned_model_name
from finetune.runner import JobRunner
from registry.api import ApiError
from registry.entities import VersionKind
from registry.errors import RegistryError
from registry.service import Registry

PURPOSE = "fine-tune"
_CHUNK = 1 << 20


def _timestamp(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def _not_found(what: str, value: str, code: str, param: str) -> ApiError:
    return ApiError(404, f"no {what} {value!r}", code=code, param=param)


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Literal["auto"] = Field("auto", description="Passes over the training file.")
    batch_size: int | Literal["auto"] = Field("auto", description="Rows per optimizer step.")
    learning_rate_multiplier: float | Literal["auto"] = Field(
        "auto", description="Scales the gateway's base learning rate for LoRA."
    )


class JobRequest(BaseModel):
    """OpenAI's `POST /v1/fine_tuning/jobs` body; `method` (supervised only) is accepted too."""

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(None, max_length=40)
    seed: int | None = None
    method: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None


def file_object(file: StoredFile) -> dict[str, Any]:
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": _timestamp(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
    }


def job_object(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": _timestamp(job.created_at),
        "finished_at": _timestamp(job.finished_at),
        "model": job.model,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": "org-llmops",
        "status": job.status.value,
        "hyperparameters": job.hyperparameters,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "result_files": [],
        "trained_tokens": job.trained_tokens,
        "error": job.error,
        "seed": job.recipe.get("seed"),
        "suffix": job.suffix,
        "estimated_finish": None,
        "integrations": [],
        "metadata": None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": job.hyperparameters}},
    }


def _page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}


@dataclass(frozen=True)
class Caller:
    """Who is calling: their API key id (None on a gateway without keys), whether they see
    every key's files and jobs (admins, and everyone without keys), and which models they
    may fine-tune."""

    key_id: str | None
    sees_all: bool
    may_use: Callable[[str], bool] = lambda _model: True

    def sees(self, owner: str | None) -> bool:
        return self.sees_all or owner == self.key_id

    @property
    def owner_filter(self) -> str | None:
        return None if self.sees_all else self.key_id


def fine_tuning_router(
    runner: JobRunner, registry: Registry, caller: Callable[[Request], Caller]
) -> APIRouter:
    """The routes; `caller` authenticates a request (raising the HTTP error when it fails).
    Other keys' files and jobs do not exist for a caller: 404, as for unknown ids."""
    router = APIRouter(prefix="/v1", tags=["fine-tuning"])
    settings = runner.settings
    files_dir = runner.home / "files"
    Who = Annotated[Caller, Depends(caller)]

    def stored_file(file_id: str, param: str, who: Caller) -> StoredFile:
        file = runner.store.get_file(file_id)
        if file is None or not who.sees(file.owner):
            raise _not_found("file", file_id, "file_not_found", param)
        return file

    def job_of(job_id: str, who: Caller) -> Job:
        job = runner.store.get(job_id)
        if job is None or not who.sees(job.owner):
            raise _not_found("fine-tuning job", job_id, "job_not_found", "fine_tuning_job_id")
        return job

    # -- files ----------------------------------------------------------------------------

    @router.post("/files")
    async def upload(
        who: Who, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
    ) -> dict[str, Any]:
        if purpose != PURPOSE:
            raise ApiError(
                400,
                f"purpose {purpose!r} is not supported; this gateway stores files with "
                f"purpose {PURPOSE!r}",
                code="invalid_purpose",
                param="purpose",
            )
        files_dir.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        handle, staged = tempfile.mkstemp(dir=files_dir, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := await file.read(_CHUNK):
                    size += len(chunk)
                    if size > settings.max_file_bytes:
                        raise ApiError(
                            413,
                            f"the file is over {settings.max_file_bytes} bytes; split it or "
                            "raise LLMOPS_FINETUNE_MAX_FILE_BYTES",
                            code="file_too_large",
                            param="file",
                        )
                    digest.update(chunk)
                    out.write(chunk)
            try:
                rows = read_rows(Path(staged), "chat")
            except DataError as err:
                message = str(err).replace(Path(staged).name, file.filename or "file")
                raise ApiError(400, message, code="invalid_file", param="file") from None
            file_id = f"file-{secrets.token_hex(12)}"
            path = files_dir / f"{file_id}.jsonl"
            os.replace(staged, path)
        finally:
            Path(staged).unlink(missing_ok=True)
        stored = runner.store.add_file(
            StoredFile(
                id=file_id,
                created_at=datetime.now(UTC),
                filename=Path(file.filename or "upload.jsonl").name[:255],
                purpose=purpose,
                bytes=size,
                rows=len(rows),
                path=str(path.relative_to(runner.home)),
                sha256="sha256:" + digest.hexdigest(),
                owner=who.key_id,
            )
        )
        return file_object(stored)

    @router.get("/files")
    def list_files(who: Who) -> dict[str, Any]:
        stored = runner.store.list_files(who.owner_filter)
        return {"object": "list", "data": [file_object(f) for f in stored]}

    @router.get("/files/{file_id}")
    def get_file(who: Who, file_id: str) -> dict[str, Any]:
        return file_object(stored_file(file_id, "file_id", who))

    @router.delete("/files/{file_id}")
    def delete_file(who: Who, file_id: str) -> dict[str, Any]:
        file = stored_file(file_id, "file_id", who)
        runner.store.delete_file(file.id)
        (runner.home / file.path).unlink(missing_ok=True)
        return {"id": file.id, "object": "file", "deleted": True}

    # -- jobs -----------------------------------------------------------------------------

    @router.post("/fine_tuning/jobs")
    def create_job(who: Who, body: JobRequest) -> dict[str, Any]:
        if not who.may_use(body.model):
            raise ApiError(
                403,
                f"this API key may not use the model `{body.model}`",
                code="model_not_allowed",
                param="model",
            )
        try:
            base = registry.resolve(body.model)
        except RegistryError as err:
            raise ApiError(404, err.message, code="model_not_found", param="model") from None
        if base.kind is VersionKind.ADAPTER:
            raise ApiError(
                400,
                f"{body.model} is a fine-tuned adapter; fine-tune its base ({base.parent})",
                code="invalid_model",
                param="model",
            )
        training = stored_file(body.training_file, "training_file", who)
        validation = (
            stored_file(body.validation_file, "validation_file", who)
            if body.validation_file
            else None
        )
        hyper = _hyperparameters(body, settings)
        base_dir = registry.local_copy(base, runner.home / "cache" / "models")
        config = json.loads((base_dir / "config.json").read_text())
        datasets = [{"path": str(runner.home / training.path), "type": "chat"}]
        if validation:
            datasets.append(
                {"path": str(runner.home / validation.path), "type": "chat", "split": "validation"}
            )
        try:
            recipe = parse_recipe(
                {
                    "base_model": base.ref,
                    "adapter": "lora",
                    "datasets": datasets,
                    "sequence_len": min(2048, int(config.get("max_position_embeddings", 2048))),
                    "micro_batch_size": hyper["batch_size"],
                    "num_epochs": hyper["n_epochs"],
                    "learning_rate": settings.api_learning_rate * hyper["learning_rate_multiplier"],
                    "warmup_ratio": 0.05,
                    "seed": body.seed if body.seed is not None else secrets.randbelow(2**31),
                    "suffix": body.suffix,
                },
                "job",
            )
        except RecipeError as err:
            raise ApiError(400, str(err).removeprefix("job: "), code="invalid_request") from None
        job = runner.submit(
            recipe,
            body.model,
            hyperparameters=hyper,
            training_file=training.id,
            validation_file=validation.id if validation else None,
            owner=who.key_id,
        )
        return job_object(job)

    @router.get("/fine_tuning/jobs")
    def list_jobs(
        who: Who, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> dict[str, Any]:
        jobs = runner.store.list_jobs(limit=limit + 1, after=after, owner=who.owner_filter)
        return _page([job_object(j) for j in jobs], limit)

    @router.get("/fine_tuning/jobs/{job_id}")
    def get_job(who: Who, job_id: str) -> dict[str, Any]:
        return job_object(job_of(job_id, who))

    @router.post("/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(who: Who, job_id: str) -> dict[str, Any]:
        job = job_of(job_id, who)
        if job.status.finished:
            raise ApiError(
                400,
                f"job {job_id} already {job.status.value}; only queued or running jobs can be "
                "cancelled",
                code="invalid_request",
                param="fine_tuning_job_id",
            )
        return job_object(runner.cancel(job.id))

    @router.get("/fine_tuning/jobs/{job_id}/events")
    def list_events(
        who: Who,
        job_id: str,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        job = job_of(job_id, who)
        cursor = (after or "").removeprefix("ftevent-")
        events = runner.store.list_events(
            job.id, limit=limit + 1, after=int(cursor) if cursor.isdigit() else None
        )
        data = [
            {
                "id": f"ftevent-{e.id}",
                "object": "fine_tuning.job.event",
                "created_at": _timestamp(e.created_at),
                "level": e.level,
                "message": e.message,
                "data": e.data,
                "type": "metrics" if e.data else "message",
            }
            for e in events
        ]
        return _page(data, limit)

    @router.get("/fine_tuning/jobs/{job_id}/checkpoints")
    def list_checkpoints(
        who: Who, job_id: str, limit: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> dict[str, Any]:
        job = job_of(job_id, who)
        base = job.recipe["base_model"].split(":", 1)[0]
        name = fine_tuned_model_name(base, job.suffix, job.id)
        data = [
            {
                "id": c.id,
                "object": "fine_tuning.job.checkpoint",
                "created_at": _timestamp(c.created_at),
                "fine_tuned_model_checkpoint": f"{name}:ckpt-step-{c.step}",
                "fine_tuning_job_id": job.id,
                "step_number": c.step,
                "metrics": {"step": c.step, **c.metrics},
            }
            for c in runner.store.list_checkpoints(job.id)
        ]
        page = _page(data, limit)
        page["first_id"] = data[0]["id"] if data else None
        page["last_id"] = data[min(limit, len(data)) - 1]["id"] if data else None
        return page

    return router


def _hyperparameters(body: JobRequest, settings: Any) -> dict[str, Any]:
    """The request's hyperparameters (or those under `method.supervised`), 'auto' resolved."""
    given = body.hyperparameters
    if given is None and body.method:
        if body.method.get("type", "supervised") != "supervised":
            raise ApiError(
                400,
                f"method {body.method.get('type')!r} is not supported; use 'supervised'",
                code="invalid_request",
                param="method.type",
            )
        supervised = (body.method.get("supervised") or {}).get("hyperparameters") or {}
        given = Hyperparameters.model_validate(supervised)
    given = given or Hyperparameters()
    checks = {
        "n_epochs": (given.n_epochs, settings.api_n_epochs, 1, 50),
        "batch_size": (given.batch_size, settings.api_batch_size, 1, 256),
        "learning_rate_multiplier": (given.learning_rate_multiplier, 1.0, 1e-3, 100.0),
    }
    resolved = {}
    for key, (value, default, low, high) in checks.items():
        value = default if value == "auto" else value
        if not low <= value <= high:
            raise ApiError(
                400,
                f"hyperparameters.{key} is {value}; use 'auto' or a value from {low} to {high}",
                code="invalid_request",
                param=f"hyperparameters.{key}",
            )
        resolved[key] = value
    return resolved
