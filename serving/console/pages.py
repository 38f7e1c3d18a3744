"""Rendering: the templates, and the route class that turns every error a console handler
raises (the services' `StackError`, `ConsoleError`, a bad path or form) into an HTML page
with its status instead of the JSON envelope of the API."""

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from core.errors import StackError
from serving.console.errors import ConsoleError
from serving.console.session import Session, current_session

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["timestamp"] = lambda seconds: (
    datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S") if seconds else ""
)
STATIC_DIR = HERE / "static"


def render(
    request: Request,
    template: str,
    session: Session | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    return templates.TemplateResponse(
        request, template, {"session": session, **context}, status_code=status_code
    )


def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    """The error, with the navigation of the request's session when it has a valid one."""
    try:
        session = current_session(request) if status != 401 else None
    except ConsoleError:
        session = None
    return render(request, "error.html", session, status_code=status, title=title, message=message)


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "input"
    return f"{where}: {first.get('msg', 'invalid value')}"


class ConsoleRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ConsoleError as err:
                return error_page(request, err.status, err.title, err.message)
            except StackError as err:
                return error_page(request, err.http_status, "Refused", err.message)
            except RequestValidationError as err:
                return error_page(request, 400, "Bad input", _validation_message(err))

        return handle
