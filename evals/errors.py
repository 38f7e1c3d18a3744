"""The evaluation package's exceptions, on the stack's base (`core.errors`)."""

from core.errors import ErrorCode, StackError


class EvalsError(StackError):
    """An evaluation or explanation request that cannot be done; the message says what was
    wrong and what to do."""


def invalid(message: str, *, param: str | None = None) -> EvalsError:
    return EvalsError(ErrorCode.INVALID, message, param=param, api_code="invalid_request")
