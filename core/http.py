"""HTTP errors: the OpenAI error envelope `{"error": {"message", "type", "param", "code"}}`,
the one place that maps every exception to it, and its schema for OpenAPI documents."""

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.errors import StackError

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorDetail


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The OpenAI error envelope with its HTTP status."""
    detail = _detail(status, message, code=code, param=param)
    return JSONResponse(
        ErrorEnvelope(error=detail).model_dump(), status_code=status, headers=headers
    )


def _detail(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> ErrorDetail:
    return ErrorDetail(message=message, type=error_type(status), param=param, code=code)


_INTERNAL = "internal error; the server log has the details"


def stream_error(exc: Exception) -> ErrorEnvelope:
    """The envelope of an error that ends a stream whose status line has already gone out:
    sent as its last event, so the client learns why it ended."""
    if isinstance(exc, StackError):
        detail = _detail(exc.http_status, exc.message, code=exc.api_code, param=exc.param)
    else:
        log.error("unhandled error in a stream", exc_info=exc)
        detail = _detail(500, _INTERNAL, code="internal_error")
    return ErrorEnvelope(error=detail)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route for OpenAPI: each status with the envelope's schema."""
    return {
        status: {"model": ErrorEnvelope, "description": HTTPStatus(status).phrase}
        for status in statuses
    }


async def _stack_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StackError)
    return error_response(
        exc.http_status, exc.message, code=exc.api_code, param=exc.param, headers=exc.headers
    )


_TYPE_NAMES = {"int", "str", "float", "bool", "dict", "list", "none"}


def _is_field(part: object) -> bool:
    """Whether a part of pydantic's error location names a field or an index (not the
    request section, nor the member of a union that was tried)."""
    if isinstance(part, int):
        return True
    text = str(part)
    return text not in ("body", "query", "path") and not (
        text in _TYPE_NAMES or any(c in text for c in "-[]'(")
    )


_NOT_AN_OBJECT = {"model_type", "model_attributes_type", "dict_type", "missing"}


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if _is_field(part)]
    param = ".".join(location) or None
    detail = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
    elif param is None and first.get("type") in _NOT_AN_OBJECT:
        message = "the request body must be a JSON object; see the API reference for its fields"
    elif param is None:
        message = detail  # a rule across fields, which says what is wrong
    else:
        message = f"{param}: {detail}"
    return error_response(400, message, code="invalid_request", param=param)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Every method the path takes, not only those of the first route that matched it.
        methods = {
            method
            for route in request.app.router.routes
            if route.matches(request.scope)[0] is not Match.NONE
            for method in getattr(route, "methods", None) or ()
        }
        headers["Allow"] = ", ".join(sorted(methods))
    return error_response(exc.status_code, str(exc.detail), code=code, headers=headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, _INTERNAL, code="internal_error")


def document_errors(app: FastAPI) -> None:
    """Make the application's OpenAPI document say what it does: validation errors are 400
    in the error envelope (FastAPI documents them as 422 with its own schema)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            bad_request = {
                "description": "Bad Request",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}
                },
            }
            for path_item in schema["paths"].values():
                for operation in path_item.values():
                    responses = operation["responses"]
                    if "HTTPValidationError" in str(responses.get("422", "")):
                        del responses["422"]
                    responses.setdefault("400", bad_request)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Map every error a route can raise to the OpenAI envelope; no traceback reaches a client."""
    app.add_exception_handler(StackError, _stack_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
