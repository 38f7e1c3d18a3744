"""Fine-tuning's exceptions, on the stack's base (`core.errors`): a missing job or file is a
fine-tuning error with its own code, not the registry's `model_not_found`."""

from core.errors import ErrorCode, StackError


class FinetuneError(StackError):
    """A fine-tuning operation failed; the message says what was wrong and what to do."""


class RecipeError(FinetuneError):
    """A recipe that cannot be used; the message says which key and what to do."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(ErrorCode.INVALID, message, param=param, api_code="invalid_recipe")


def quota_exceeded(message: str) -> FinetuneError:
    return FinetuneError(ErrorCode.RATE_LIMITED, message, api_code="quota_exceeded")


def file_too_large(max_bytes: int) -> FinetuneError:
    return FinetuneError(
        ErrorCode.TOO_LARGE,
        f"the file is over {max_bytes} bytes, the most this key may upload now "
        "(LLMOPS_FINETUNE_MAX_FILE_BYTES per file, LLMOPS_FINETUNE_MAX_FILE_BYTES_PER_KEY in "
        "all); split it or delete older files",
        param="file",
        api_code="file_too_large",
    )


def invalid_cursor(after: str, what: str) -> FinetuneError:
    # NOT_FOUND, not INVALID: the cursor is well formed and names something that is not there
    return FinetuneError(
        ErrorCode.NOT_FOUND,
        f"no {what} {after!r} to list after; `after` takes the `last_id` of an earlier page "
        "of this list (leave it out to start at the first)",
        param="after",
        api_code="invalid_cursor",
    )


def job_not_found(job_id: str) -> FinetuneError:
    return FinetuneError(
        ErrorCode.NOT_FOUND,
        f"no fine-tuning job {job_id!r}; `llm-finetune list` (or GET /v1/fine_tuning/jobs) "
        "shows the jobs",
        param="fine_tuning_job_id",
        api_code="job_not_found",
    )


def file_not_found(file_id: str, param: str) -> FinetuneError:
    return FinetuneError(
        ErrorCode.NOT_FOUND,
        f"no file {file_id!r}; GET /v1/files lists the files you uploaded",
        param=param,
        api_code="file_not_found",
    )
