"""The one logging setup of every command of the stack: `--log-level` and `--log-format` (or
`LLMOPS_LOG_LEVEL` and `LLMOPS_LOG_FORMAT`), readable text by default or one JSON object a
line. Every line a gateway request causes carries its request id, API key id, model and
version (`bind_request`, `tag_request`); uvicorn's lines go through the same handler."""

import json
import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import click

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
LEVEL_ENV = "LLMOPS_LOG_LEVEL"
FORMAT_ENV = "LLMOPS_LOG_FORMAT"
REQUEST_FIELDS = ("request_id", "key_id", "model", "version")
# uvicorn gives these handlers of its own unless it runs with `log_config=None`.
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

# One mutable dict per request: the tasks and threads a request starts copy the context, so
# they share its dict, and a field tagged in any of them (the key id, resolved in a worker
# thread) shows on the lines of all.
_request: ContextVar[dict[str, str] | None] = ContextVar("llmops_request", default=None)
_handler: logging.Handler | None = None


def bind_request(request_id: str) -> None:
    """Tag every record logged from here on in this context with `request_id`."""
    _request.set({"request_id": request_id})


def tag_request(**fields: str) -> None:
    """Add `REQUEST_FIELDS` (key_id, model, version) to the current request's records;
    nothing outside a request."""
    current = _request.get()
    if current is not None:
        current.update(fields)


class RequestFields(logging.Filter):
    """Copies the current request's fields onto each record (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _request.get() or {}
        for name in REQUEST_FIELDS:
            setattr(record, name, fields.get(name))
        return True


def _tags(record: logging.LogRecord) -> dict[str, Any]:
    return {n: v for n in REQUEST_FIELDS if (v := getattr(record, n, None)) is not None}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request_tags)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        tags = " ".join(f"{name}={value}" for name, value in _tags(record).items())
        record.request_tags = f" [{tags}]" if tags else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_tags(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes, as logging's last resort
    does (tests and `click` swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def configure_logging(
    level: str | None = None, fmt: str | None = None, *, stream: TextIO | None = None
) -> None:
    """Send every record, uvicorn's included, to one handler on `stream` (stderr). `level` and
    `fmt` default to `LLMOPS_LOG_LEVEL` and `LLMOPS_LOG_FORMAT`, then info and text. Called
    again, it replaces the handler it installed before."""
    global _handler
    level = (level or os.environ.get(LEVEL_ENV) or "info").lower()
    fmt = (fmt or os.environ.get(FORMAT_ENV) or "text").lower()
    if level not in LEVELS:
        raise ValueError(f"the log level {level!r} is not one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"the log format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "json":
        # Hugging Face's progress bars would be lines of stderr that are not JSON; read on
        # the import of `huggingface_hub`, which every command line puts off until needed.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handler = logging.StreamHandler(stream) if stream else _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestFields())
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _handler = handler
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def _chosen(ctx: click.Context, param: click.Parameter, value: str) -> None:
    chosen = ctx.meta.setdefault("llmops.logging", {})
    chosen[param.name] = value
    if ctx.get_parameter_source(param.name) is click.ParameterSource.COMMANDLINE:
        # So that the processes the command starts (fine-tuning workers) log alike.
        os.environ[LEVEL_ENV if param.name == "log_level" else FORMAT_ENV] = value
    if len(chosen) == 2:
        configure_logging(chosen["log_level"], chosen["log_format"])


def add_log_options(group: click.Group, default_level: str) -> None:
    """Give a command line `--log-level` and `--log-format`, which set up logging before any
    of its commands runs."""
    if any(p.name == "log_level" for p in group.params):
        return
    group.params += [
        click.Option(
            ["--log-level"],
            type=click.Choice(LEVELS, case_sensitive=False),
            default=default_level,
            envvar=LEVEL_ENV,
            show_default=True,
            show_envvar=True,
            is_eager=True,
            expose_value=False,
            callback=_chosen,
            help="Least severe log records shown (on stderr).",
        ),
        click.Option(
            ["--log-format"],
            type=click.Choice(FORMATS, case_sensitive=False),
            default="text",
            envvar=FORMAT_ENV,
            show_default=True,
            show_envvar=True,
            is_eager=True,
            expose_value=False,
            callback=_chosen,
            help="Log lines as text, or as one JSON object a line (with each request's "
            "request_id, key_id, model and version).",
        ),
    ]
