"""The one base of every package's exception, its error codes and their HTTP statuses
(as MLflow's `MlflowException`): a package raises its own subclass, and the gateway maps
any of them to the OpenAI error envelope in one place."""

from enum import StrEnum
from typing import ClassVar


class ErrorCode(StrEnum):
    INVALID = "INVALID"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CONFLICT = "CONFLICT"
    TOO_LARGE = "TOO_LARGE"
    GATE_FAILED = "GATE_FAILED"
    RATE_LIMITED = "RATE_LIMITED"
    INTEGRITY = "INTEGRITY"
    INTERNAL = "INTERNAL"
    UPSTREAM = "UPSTREAM"
    UNAVAILABLE = "UNAVAILABLE"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.GATE_FAILED: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTEGRITY: 500,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UPSTREAM: 502,
    ErrorCode.UNAVAILABLE: 503,
}


class StackError(Exception):
    """An operation failed. The message may reach clients: it says what was wrong and what to
    do about it, and never carries a server path or a traceback.

    `api_code` is the machine-readable `code` of the OpenAI error envelope; by default the
    subclass's `api_codes` entry for `code`, else the code in lower case."""

    api_codes: ClassVar[dict[ErrorCode, str]] = {}

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        param: str | None = None,
        api_code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.api_code = api_code or self.api_codes.get(code, code.value.lower())
        self.headers = headers or {}

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]
