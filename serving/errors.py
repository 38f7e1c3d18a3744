"""Gateway errors and the one place that maps every exception to the OpenAI error envelope."""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from registry.api import ApiError, error_response, install_error_handlers
from serving.engine import EngineError

log = logging.getLogger(__name__)


class ServingError(ApiError):
    """A request the gateway refuses or cannot serve; the message reaches the client."""


def bad_request(message: str, *, param: str | None = None) -> ServingError:
    return ServingError(400, message, code="invalid_request", param=param)


async def engine_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("engine error: %s", exc)
    return error_response(503, f"the model backend is unavailable: {exc}", code="backend_error")


def install_serving_error_handlers(app: FastAPI) -> None:
    install_error_handlers(app)
    app.add_exception_handler(EngineError, engine_error_handler)
