"""The registry's one domain exception, its error codes and their HTTP statuses."""

from enum import StrEnum


class ErrorCode(StrEnum):
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    INVALID = "INVALID"
    GATE_FAILED = "GATE_FAILED"
    INTEGRITY = "INTEGRITY"
    CONFLICT = "CONFLICT"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.INVALID: 400,
    ErrorCode.GATE_FAILED: 422,
    ErrorCode.INTEGRITY: 500,
    ErrorCode.CONFLICT: 409,
}


class RegistryError(Exception):
    """A registry operation failed. The message may reach clients: it says what was wrong
    and what to do about it."""

    def __init__(self, code: ErrorCode, message: str, *, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


class AliasMovedError(RegistryError):
    """CONFLICT: an alias moved between reading it and changing it; the change can be retried."""
