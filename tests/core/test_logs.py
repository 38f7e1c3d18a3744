import contextvars
import io
import json
import logging
from collections.abc import Iterator

import pytest

from core.logs import bind_request, configure_logging, tag_request

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Logging as it was before the test (pytest's handlers, uvicorn's loggers)."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in UVICORN_LOGGERS)]
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    yield
    for logger, level, propagate, handlers in saved:
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers


def _in_request(message: str) -> None:
    bind_request("req-1")
    tag_request(key_id="key_1", model="demo", version="3")
    logging.getLogger("tests.logs").warning(message)


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_name_the_request_they_belong_to() -> None:
    stream = io.StringIO()
    configure_logging("info", "text", stream=stream)
    contextvars.copy_context().run(_in_request, "in a request")
    logging.getLogger("tests.logs").info("outside %s", "any request")
    inside, outside = stream.getvalue().splitlines()
    assert inside.endswith(
        " WARNING tests.logs [request_id=req-1 key_id=key_1 model=demo version=3]: in a request"
    )
    assert outside.endswith(" INFO tests.logs: outside any request")


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_and_the_level() -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream)
    contextvars.copy_context().run(_in_request, "kept")
    logging.getLogger("tests.logs").info("below the level")
    logging.getLogger("uvicorn.access").warning("through the same handler")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    expected = {
        "level": "WARNING",
        "logger": "tests.logs",
        "message": "kept",
        "request_id": "req-1",
        "key_id": "key_1",
        "model": "demo",
        "version": "3",
    }
    assert first.items() >= expected.items()
    assert second["logger"] == "uvicorn.access" and "request_id" not in second


@pytest.mark.usefixtures("restore_logging")
def test_levels_and_formats_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("LLMOPS_LOG_FORMAT", "json")
    stream = io.StringIO()
    configure_logging(stream=stream)
    assert logging.getLogger().level == logging.ERROR
    monkeypatch.setenv("LLMOPS_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="the log format 'xml' is not one of text, json"):
        configure_logging()
