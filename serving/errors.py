"""The gateway's exceptions, on the stack's base (`core.errors`); `core.http` maps them, and
every other package's, to the OpenAI error envelope."""

from core.errors import ErrorCode, StackError


class ServingError(StackError):
    """A request the gateway refuses or cannot serve; the message reaches the client."""


class EngineError(ServingError):
    """An engine could not run a request (a crashed or unreachable server, a failed load)."""

    def __init__(self, message: str):
        super().__init__(
            ErrorCode.UNAVAILABLE,
            f"the model backend is unavailable: {message}",
            api_code="backend_error",
        )


def overloaded(message: str) -> ServingError:
    """503 with Retry-After: the engine has no room for the request now."""
    return ServingError(
        ErrorCode.UNAVAILABLE,
        f"{message}; retry shortly",
        api_code="engine_overloaded",
        headers={"Retry-After": "1"},
    )


def model_not_found(model: str, why: str) -> ServingError:
    return ServingError(
        ErrorCode.NOT_FOUND,
        f"The model `{model}` does not exist: {why}",
        param="model",
        api_code="model_not_found",
    )


def bad_request(message: str, *, param: str | None = None) -> ServingError:
    return ServingError(ErrorCode.INVALID, message, param=param, api_code="invalid_request")
