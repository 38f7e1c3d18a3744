"""Gateway errors and the one place that maps every exception to the OpenAI error envelope."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from registry.api import error_response, install_error_handlers
from serving.engine import EngineError

log = logging.getLogger(__name__)


class ServingError(Exception):
    """A request the gateway refuses or cannot serve; the message reaches the client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


def bad_request(message: str, *, param: str | None = None) -> ServingError:
    return ServingError(400, message, code="invalid_request", param=param)


async def serving_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    response = error_response(exc.status, exc.message, code=exc.code, param=exc.param)
    response.headers.update(exc.headers)
    return response


async def engine_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("engine error: %s", exc)
    return error_response(503, f"the model backend is unavailable: {exc}", code="backend_error")


def install_serving_error_handlers(app: FastAPI) -> None:
    install_error_handlers(app)
    app.add_exception_handler(ServingError, serving_error_handler)
    app.add_exception_handler(EngineError, engine_error_handler)
