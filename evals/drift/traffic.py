"""What the drift monitor and the loop read of the gateway's traffic log. The gateway hands
its own log over; outside it, `open_traffic_source` loads the reader the settings name, so
that this package never imports the gateway's."""

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from core.plugins import load_plugin
from core.settings import StackSettings
from evals.settings import EvalsSettings


class LoggedRequest(Protocol):
    created_at: datetime
    request_id: str
    key_id: str | None
    version: str
    prompt: str  # as the model saw it (chat template applied)
    output: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    finish_reason: str | None
    messages: list[dict[str, str]] | None  # a chat request's


class TrafficColumns(Protocol):
    """Many records as columns, in the order they were stored."""

    start: datetime | None  # the first record's time
    end: datetime | None  # the last record's
    request_id: list[str]
    prompt: list[str]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    latency_ms: list[int]
    finish_reason: list[str | None]

    def __len__(self) -> int: ...


class TrafficSource(Protocol):
    def columns(
        self,
        version: str,
        *,
        newest: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
    ) -> TrafficColumns:
        """A version's `newest` records, or its first `limit` with `start <= created_at <
        end`."""

    def find(self, request_id: str, limit: int = 64) -> list[LoggedRequest]:
        """The records of a request id, oldest first."""

    def versions(self, since: datetime) -> list[str]:
        """The versions that answered since then."""


def open_traffic_source(
    stack: StackSettings, settings: EvalsSettings | None = None
) -> TrafficSource:
    opener: Callable[[StackSettings], TrafficSource] = load_plugin(
        (settings or EvalsSettings()).traffic_source, "LLMOPS_EVALS_TRAFFIC_SOURCE"
    )
    return opener(stack)
