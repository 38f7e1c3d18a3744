"""The handlers of the Batch API: each takes the caller and a request and returns a batch
object or raises a ServingError. Another key's batches do not exist for a caller (404, as
for unknown ids), and neither do its files; admins see every key's."""

import json
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ValidationError

from core.callers import Caller
from core.database import utc_now
from core.errors import ErrorCode
from core.listing import ListPage, page
from finetune.service import FineTuningService
from serving.batches.config import BatchesConfig
from serving.batches.protocol import (
    BatchErrors,
    BatchObject,
    BatchRequest,
    BatchRequestCounts,
    BatchUsage,
)
from serving.batches.store import ACTIVE, Batch, BatchStore, Line, new_batch_id
from serving.errors import ServingError, bad_request
from serving.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}
MAX_CUSTOM_ID = 512


def _timestamp(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def batch_object(batch: Batch) -> BatchObject:
    return BatchObject(
        id=batch.id,
        endpoint=batch.endpoint,  # type: ignore[arg-type]
        errors=BatchErrors(data=batch.errors) if batch.errors else None,  # type: ignore[arg-type]
        input_file_id=batch.input_file_id,
        completion_window=batch.completion_window,
        status=batch.status,  # type: ignore[arg-type]
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        created_at=int(batch.created_at.timestamp()),
        in_progress_at=_timestamp(batch.in_progress_at),
        expires_at=_timestamp(batch.expires_at),
        finalizing_at=_timestamp(batch.finalizing_at),
        completed_at=_timestamp(batch.completed_at),
        failed_at=_timestamp(batch.failed_at),
        expired_at=_timestamp(batch.expired_at),
        cancelling_at=_timestamp(batch.cancelling_at),
        cancelled_at=_timestamp(batch.cancelled_at),
        request_counts=BatchRequestCounts(
            completed=batch.completed, failed=batch.failed, total=batch.total
        ),
        usage=BatchUsage(
            input_tokens=batch.input_tokens,
            output_tokens=batch.output_tokens,
            total_tokens=batch.input_tokens + batch.output_tokens,
        ),
        model=batch.model,
        metadata=batch.metadata,
    )


def batch_not_found(batch_id: str) -> ServingError:
    return ServingError(
        ErrorCode.NOT_FOUND,
        f"no batch {batch_id!r}; GET /v1/batches lists yours",
        param="batch_id",
        api_code="batch_not_found",
    )


def _bad_line(number: int, message: str, param: str | None = None) -> ServingError:
    return ServingError(
        ErrorCode.INVALID,
        f"input file line {number}: {message}",
        param=param or "input_file_id",
        api_code="invalid_batch_line",
    )


def read_lines(path: Path, endpoint: str, max_lines: int) -> list[Line]:
    """Every request of a batch file, checked as the endpoint would check it; the first bad
    line is a 400 that names it."""
    request_model = REQUEST_MODELS[endpoint]
    lines: list[Line] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            if len(lines) == max_lines:
                raise bad_request(
                    f"the input file has more than {max_lines} requests, the most a batch "
                    "takes; split it",
                    param="input_file_id",
                )
            try:
                row = json.loads(text)
            except ValueError as err:
                raise _bad_line(number, f"not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise _bad_line(number, "not a JSON object")
            custom_id = row.get("custom_id")
            if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
                raise _bad_line(
                    number, f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters"
                )
            if custom_id in seen:
                raise _bad_line(number, f"custom_id {custom_id!r} is used by an earlier line")
            seen.add(custom_id)
            if row.get("method", "POST") != "POST":
                raise _bad_line(number, "method must be POST")
            if row.get("url") != endpoint:
                raise _bad_line(
                    number,
                    f"url is {row.get('url')!r}; every line of this batch goes to {endpoint}",
                )
            body = row.get("body")
            if not isinstance(body, dict):
                raise _bad_line(number, "body must be a JSON object (the request)")
            if unknown := set(row) - {"custom_id", "method", "url", "body"}:
                raise _bad_line(number, f"unknown field {sorted(unknown)[0]!r}")
            if body.get("stream"):
                raise _bad_line(number, "stream is not available in a batch")
            try:
                request_model.model_validate(body)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "body"
                raise _bad_line(number, f"body.{where}: {first['msg']}") from None
            lines.append(Line(number, custom_id, body))
    if not lines:
        raise bad_request("the input file holds no requests", param="input_file_id")
    return lines


class BatchHandlers:
    def __init__(self, store: BatchStore, files: FineTuningService, config: BatchesConfig):
        self.store = store
        self.files = files
        self.config = config

    def _batch(self, caller: Caller, batch_id: str) -> Batch:
        batch = self.store.get(batch_id)
        if batch is None or not caller.sees(batch.owner):
            raise batch_not_found(batch_id)
        return batch

    def create(self, caller: Caller, request: BatchRequest) -> BatchObject:
        file = self.files.stored_file(caller, request.input_file_id, "input_file_id")
        if file.purpose != "batch":
            raise bad_request(
                f"file {file.id} was uploaded with purpose {file.purpose!r}; a batch reads a "
                "file uploaded with purpose 'batch'",
                param="input_file_id",
            )
        active = [
            b for b in self.store.list_batches(caller.key_id, None, 10_000) if b.status in ACTIVE
        ]
        if len(active) >= self.config.max_active_per_key:
            raise ServingError(
                ErrorCode.RATE_LIMITED,
                f"this key has {len(active)} unfinished batches, its limit; wait for one or "
                "cancel one",
                api_code="too_many_batches",
            )
        path = self.files.file_path(caller, file.id, "input_file_id")
        lines = read_lines(path, request.endpoint, self.config.max_lines)
        now = utc_now()
        batch = Batch(
            id=new_batch_id(),
            owner=caller.key_id,
            endpoint=request.endpoint,
            input_file_id=file.id,
            completion_window=request.completion_window,
            model=str(lines[0].body.get("model")),
            metadata=request.metadata,
            status="validating",
            total=len(lines),
            created_at=now,
            expires_at=now + timedelta(hours=24),
        )
        return batch_object(self.store.create(batch, lines))

    def get(self, caller: Caller, batch_id: str) -> BatchObject:
        return batch_object(self._batch(caller, batch_id))

    def list(self, caller: Caller, after: str | None, limit: int) -> ListPage[BatchObject]:
        if after is not None:
            self._batch(caller, after)  # an unknown cursor is a 404, not the first page
        batches = self.store.list_batches(caller.owner_filter, after, limit)
        return page([batch_object(b) for b in batches], limit, lambda b: b.id)

    def cancel(self, caller: Caller, batch_id: str) -> BatchObject:
        """Ask the runner to stop: lines running now are abandoned, and the output file gets
        the lines that finished. 409 for a batch that already ended otherwise."""
        batch = self._batch(caller, batch_id)
        moved = self.store.move(batch.id, "cancelling", only_from=("validating", "in_progress"))
        batch = self._batch(caller, batch_id)
        if not moved and batch.status not in ("cancelling", "cancelled"):
            raise ServingError(
                ErrorCode.CONFLICT,
                f"batch {batch.id} is {batch.status}; only a validating or in-progress batch "
                "can be cancelled",
                param="batch_id",
                api_code="batch_not_cancellable",
            )
        return batch_object(batch)
