"""The handlers of the files and fine-tuning jobs API: each takes the caller and a request,
and returns an OpenAI object or raises a FinetuneError. Other keys' files and jobs do not
exist for a caller (404, as for unknown ids); admins see every key's."""

import asyncio
import hashlib
import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import UploadFile

from core.callers import Caller
from core.database import utc_now
from core.errors import ErrorCode, StackError
from core.listing import ListPage, page
from core.refs import fine_tuned_name, parse_ref
from finetune.data import DataError, count_rows
from finetune.errors import (
    FinetuneError,
    file_not_found,
    file_too_large,
    invalid_cursor,
    job_not_found,
    quota_exceeded,
)
from finetune.files import FileStore, Order, StoredFile
from finetune.hyperparameters import api_recipe, resolve_hyperparameters
from finetune.jobs import Job, JobStore
from finetune.protocol import (
    CheckpointObject,
    FileDeleted,
    FileObject,
    FineTuningJob,
    JobError,
    JobEventObject,
    JobHyperparameters,
    JobMethod,
    JobRequest,
    SupervisedSettings,
)
from finetune.runner import JobRunner
from finetune.uploads import stage_upload
from registry.entities import VersionKind
from registry.errors import RegistryError
from registry.service import Registry


def _timestamp(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def file_object(file: StoredFile) -> FileObject:
    return FileObject(
        id=file.id,
        bytes=file.bytes,
        created_at=_timestamp(file.created_at),
        filename=file.filename,
        purpose=file.purpose,
    )


def _whole(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number.is_integer() else None


def _number(value: Any) -> float | None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number else None


def job_hyperparameters(job: Job) -> JobHyperparameters:
    """A job's hyperparameters in the API's terms: an API job's resolved values; for a job
    from a recipe (the CLI's, the continuous-training loop's, distillation, pruning), its
    epochs and rows per optimizer step on one device; null for what a job's kind does not
    store (a search trial, a federated run) or stores as something else."""
    stored, recipe = job.hyperparameters or {}, job.recipe or {}
    batch_size = stored.get("batch_size")
    if batch_size is None and _number(recipe.get("micro_batch_size")) is not None:
        accumulation = _number(recipe.get("gradient_accumulation_steps")) or 1
        batch_size = recipe["micro_batch_size"] * accumulation
    return JobHyperparameters(
        n_epochs=_whole(stored.get("n_epochs", recipe.get("num_epochs"))),
        batch_size=_whole(batch_size),
        learning_rate_multiplier=_number(stored.get("learning_rate_multiplier")),
    )


def job_object(job: Job) -> FineTuningJob:
    hyper = job_hyperparameters(job)
    return FineTuningJob(
        id=job.id,
        created_at=_timestamp(job.created_at),
        finished_at=_timestamp(job.finished_at),
        model=job.model,
        fine_tuned_model=job.fine_tuned_model,
        status=job.status.value,
        hyperparameters=hyper,
        training_file=job.training_file,
        validation_file=job.validation_file,
        trained_tokens=job.trained_tokens,
        error=JobError(**job.error) if job.error else None,
        seed=job.recipe.get("seed"),
        suffix=job.suffix,
        metadata=job.metadata,
        method=JobMethod(supervised=SupervisedSettings(hyperparameters=hyper)),
    )


class FineTuningService:
    def __init__(self, runner: JobRunner, registry: Registry):
        self.runner = runner
        self.registry = registry
        self.files = FileStore(runner.store.engine)

    @property
    def store(self) -> JobStore:
        return self.runner.store

    def stored_file(self, caller: Caller, file_id: str, param: str) -> StoredFile:
        """The caller's file `file_id`; 404 (naming `param`) for another key's or an unknown
        one."""
        file = self.files.get(file_id)
        if file is None or not caller.sees(file.owner):
            raise file_not_found(file_id, param)
        return file

    def _job(self, caller: Caller, job_id: str) -> Job:
        job = self.runner.get(job_id)
        if not caller.sees(job.owner):
            raise job_not_found(job_id)
        return job

    # -- files ----------------------------------------------------------------------------

    def _room(self, owner: str | None) -> int:
        """The bytes `owner` (None: no key) may still upload; 429 where it may upload nothing."""
        settings, usage = self.runner.settings, self.files.usage(owner)
        if usage.files >= settings.max_files_per_key:
            raise quota_exceeded(
                f"this key stores {usage.files} files, its limit; delete some "
                "(DELETE /v1/files/{id}) before uploading more"
            )
        room = settings.max_file_bytes_per_key - usage.bytes
        if room <= 0:
            raise quota_exceeded(
                "this key's files fill its storage quota; delete some before uploading more"
            )
        return room

    async def upload(self, caller: Caller, upload: UploadFile, purpose: str) -> FileObject:
        settings = self.runner.settings
        room = self._room(caller.key_id)  # to stop reading early; the insert checks again
        files_dir = self.runner.stack.files_dir
        staged = await stage_upload(upload, files_dir, min(settings.max_file_bytes, room))
        name = Path(upload.filename or "upload.jsonl").name[:255]
        if staged.size == 0:
            staged.path.unlink(missing_ok=True)
            raise FinetuneError(
                ErrorCode.INVALID, f"{name} is empty", param="file", api_code="invalid_file"
            )
        try:
            if purpose == "batch":  # its lines are checked when a batch is made of it
                rows = await asyncio.to_thread(_count_lines, staged.path)
            else:
                rows = await asyncio.to_thread(count_rows, staged.path, "chat")
        except DataError as err:
            staged.path.unlink(missing_ok=True)
            message = err.message.replace(staged.path.name, name)
            raise FinetuneError(
                ErrorCode.INVALID, message, param="file", api_code="invalid_file"
            ) from None
        file_id = f"file-{secrets.token_hex(12)}"
        path = files_dir / f"{file_id}.jsonl"
        os.replace(staged.path, path)
        stored = StoredFile(
            id=file_id,
            created_at=utc_now(),
            filename=name,
            purpose=purpose,
            bytes=staged.size,
            rows=rows,
            path=str(path.relative_to(self.runner.stack.resolved_home)),
            sha256=staged.sha256,
            owner=caller.key_id,
        )
        await asyncio.to_thread(self._keep_within_quota, stored)
        return file_object(stored)

    def _keep_within_quota(self, file: StoredFile) -> None:
        """Keep `file` if its owner's quota takes it now, counting uploads that finished while
        this one was read; otherwise remove its bytes and raise the quota's error."""
        settings = self.runner.settings
        try:
            while not self.files.add(
                file,
                max_files=settings.max_files_per_key,
                max_bytes=settings.max_file_bytes_per_key,
            ):
                room = self._room(file.owner)
                if room < file.bytes:
                    raise file_too_large(room)
                # Files were deleted since the insert found no room: try again.
        except Exception:
            (self.runner.stack.resolved_home / file.path).unlink(missing_ok=True)
            raise

    def store_file(self, owner: str | None, filename: str, purpose: str, content: bytes) -> str:
        """Keep `content` as a file of `owner` (such as a batch's output); its id. Outside
        the upload quota: the gateway made it, and the owner may delete it."""
        file_id = f"file-{secrets.token_hex(12)}"
        path = self.runner.stack.files_dir / f"{file_id}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        self.files.add(
            StoredFile(
                id=file_id,
                created_at=utc_now(),
                filename=filename,
                purpose=purpose,
                bytes=len(content),
                rows=content.count(b"\n"),
                path=str(path.relative_to(self.runner.stack.resolved_home)),
                sha256="sha256:" + hashlib.sha256(content).hexdigest(),
                owner=owner,
            )
        )
        return file_id

    def file_path(self, caller: Caller, file_id: str, param: str = "file_id") -> Path:
        """Where the caller's file `file_id` lies; 404 for another key's or an unknown one."""
        return self.runner.stack.resolved_home / self.stored_file(caller, file_id, param).path

    def list_files(
        self,
        caller: Caller,
        *,
        after: str | None = None,
        limit: int,
        order: Order = "desc",
        purpose: str | None = None,
    ) -> ListPage[FileObject]:
        anchor = None
        if after is not None:
            anchor = self.files.get(after)
            if anchor is None or not caller.sees(anchor.owner):
                raise invalid_cursor(after, "file")
        files = self.files.list(
            caller.owner_filter, purpose=purpose, after=anchor, limit=limit + 1, order=order
        )
        return page([file_object(f) for f in files], limit, lambda f: f.id)

    def get_file(self, caller: Caller, file_id: str) -> FileObject:
        return file_object(self.stored_file(caller, file_id, "file_id"))

    def delete_file(self, caller: Caller, file_id: str) -> FileDeleted:
        file = self.stored_file(caller, file_id, "file_id")
        self.files.delete(file.id)
        (self.runner.stack.resolved_home / file.path).unlink(missing_ok=True)
        return FileDeleted(id=file.id, deleted=True)

    # -- jobs -----------------------------------------------------------------------------

    def create_job(self, caller: Caller, request: JobRequest) -> FineTuningJob:
        if request.integrations:
            raise FinetuneError(
                ErrorCode.INVALID,
                "integrations are not supported: leave `integrations` out; a job reports its "
                "metrics in its events (GET /v1/fine_tuning/jobs/{id}/events)",
                param="integrations",
                api_code="unsupported_integration",
            )
        if not caller.may_use(request.model):
            raise FinetuneError(
                ErrorCode.PERMISSION_DENIED,
                f"this API key may not use the model `{request.model}`",
                param="model",
                api_code="model_not_allowed",
            )
        try:
            base = self.registry.resolve(request.model)
        except StackError as err:
            if err.code is not ErrorCode.INVALID:
                raise
            base = None  # not a model name at all: no such model, as for an unknown name
        if base is None or not caller.sees_model(base.owner):
            raise RegistryError(
                ErrorCode.NOT_FOUND,
                f"model {request.model!r} does not exist; GET /v1/models lists yours",
                param="model",
            )
        if base.kind is VersionKind.ADAPTER:
            raise FinetuneError(
                ErrorCode.INVALID,
                f"{request.model} is a fine-tuned adapter; fine-tune its base ({base.parent})",
                param="model",
                api_code="invalid_model",
            )
        if base.kind is VersionKind.EMBEDDING:
            raise FinetuneError(
                ErrorCode.INVALID,
                f"{request.model} is an embedding model; fine-tuning trains chat models",
                param="model",
                api_code="invalid_model",
            )
        training = self.stored_file(caller, request.training_file, "training_file")
        validation = (
            self.stored_file(caller, request.validation_file, "validation_file")
            if request.validation_file
            else None
        )
        for given, name in ((training, "training_file"), (validation, "validation_file")):
            if given is not None and given.purpose != "fine-tune":
                raise FinetuneError(
                    ErrorCode.INVALID,
                    f"file {given.id} was uploaded with purpose {given.purpose!r}; a job "
                    "trains on files uploaded with purpose 'fine-tune'",
                    param=name,
                    api_code="invalid_file",
                )
        home = self.runner.stack.resolved_home
        data = [(home / training.path, "train")]
        if validation is not None:
            data.append((home / validation.path, "validation"))
        active = self.store.count_active_jobs(caller.key_id)
        if active >= self.runner.settings.max_active_jobs_per_key:
            raise quota_exceeded(
                f"this key has {active} queued or running jobs, its limit; wait for one to "
                "end or cancel one"
            )
        hyper = resolve_hyperparameters(request, training.rows)
        recipe = api_recipe(request, base.ref, self.registry.local_copy(base), data, hyper)
        job = self.runner.submit(
            recipe,
            request.model,
            hyperparameters=hyper.model_dump(),
            training_file=training.id,
            validation_file=validation.id if validation else None,
            owner=caller.key_id,
            metadata=request.metadata,
        )
        return job_object(job)

    def list_jobs(self, caller: Caller, after: str | None, limit: int) -> ListPage[FineTuningJob]:
        jobs = self.store.list_jobs(limit=limit + 1, after=after, owner=caller.owner_filter)
        return page([job_object(j) for j in jobs], limit, lambda j: j.id)

    def get_job(self, caller: Caller, job_id: str) -> FineTuningJob:
        return job_object(self._job(caller, job_id))

    def cancel_job(self, caller: Caller, job_id: str) -> FineTuningJob:
        return job_object(self.runner.cancel(self._job(caller, job_id).id))

    def list_events(
        self, caller: Caller, job_id: str, after: str | None, limit: int
    ) -> ListPage[JobEventObject]:
        job = self._job(caller, job_id)
        cursor = (after or "").removeprefix("ftevent-")
        valid = cursor.isdigit() and len(cursor) < 10  # ids fit the 32-bit column
        events = self.store.list_events(
            job.id, limit=limit + 1, after=int(cursor) if valid else None
        )
        data = [
            JobEventObject(
                id=f"ftevent-{e.id}",
                created_at=_timestamp(e.created_at),
                level=e.level,
                message=e.message,
                data=e.data,
                type="metrics" if e.data else "message",
            )
            for e in events
        ]
        return page(data, limit, lambda e: e.id)

    def list_checkpoints(
        self, caller: Caller, job_id: str, after: str | None, limit: int
    ) -> ListPage[CheckpointObject]:
        job = self._job(caller, job_id)
        checkpoints = self.store.list_checkpoints(job.id)
        if after is not None:
            ids = [c.id for c in checkpoints]
            if after not in ids:
                raise invalid_cursor(after, f"checkpoint of job {job.id}")
            checkpoints = checkpoints[ids.index(after) + 1 :]
        name = job.fine_tuned_model or fine_tuned_name(_base_name(job), job.suffix, job.id)
        data = [
            CheckpointObject(
                id=c.id,
                created_at=_timestamp(c.created_at),
                fine_tuned_model_checkpoint=f"{name}:ckpt-step-{c.step}",
                fine_tuning_job_id=job.id,
                step_number=c.step,
                metrics={"step": c.step, **c.metrics},
            )
            for c in checkpoints[: limit + 1]
        ]
        return page(data, limit, lambda c: c.id)


def _base_name(job: Job) -> str:
    """The name of the model a job trains on: a registry model's, or a model folder's. Jobs
    without a LoRA recipe (a search trial, a federated run) name it only as their model."""
    base = job.recipe.get("base_model", job.model)
    try:
        return parse_ref(base).name
    except StackError:
        return Path(base).name


def _count_lines(path: Path) -> int:
    """The non-blank lines of a batch file, which must be UTF-8 text."""
    try:
        with path.open(encoding="utf-8") as lines:
            return sum(1 for line in lines if line.strip())
    except UnicodeDecodeError:
        raise DataError([f"{path.name} is not UTF-8 text; a batch file is JSONL"]) from None
