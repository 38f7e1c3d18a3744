"""OpenTelemetry tracing, optional: installed with `pip install .[otel]` and turned on by the
standard variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`, or
`OTEL_TRACES_EXPORTER=otlp`; `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`, ...). Spans go
over OTLP/HTTP (protobuf). Each process calls `configure` where it starts; until then, or
without the SDK, `tracer()` hands out spans that record nothing and cost nothing."""

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)
_TRACER_NAME = "llmops"
_provider: Any = None  # the SDK's TracerProvider once `configure` turned tracing on


class _Span:
    """A span that records nothing (the part of OpenTelemetry's span interface used here)."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass

    def end(self, end_time: int | None = None) -> None:
        pass


_NO_SPAN = _Span()


class _Tracer:
    @contextmanager
    def start_as_current_span(self, name: str, **_: Any) -> Iterator[_Span]:
        yield _NO_SPAN

    def start_span(self, name: str, **_: Any) -> _Span:
        return _NO_SPAN


_OFF = _Tracer()


def _wanted() -> bool:
    """Whether the environment asks for traces, as OpenTelemetry's SDKs read it."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return "otlp" in exporters or any(
        os.environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure(service_name: str) -> bool:
    """Export this process's spans when the environment asks for it; whether tracing is on.
    `OTEL_SERVICE_NAME` overrides `service_name`. Once per process: later calls change
    nothing until `shutdown`."""
    global _provider
    if _provider is not None:
        return True
    if not _wanted():
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_* variables ask for traces, but the OpenTelemetry SDK is not installed; "
            "install it with `pip install 'llmops-stack[otel]'`"
        )
        return False
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    # The exporter reads its endpoint, headers, timeout and compression from OTEL_*.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    log.info("exporting traces as %s to %s", name, otlp_traces_endpoint())
    return True


def shutdown() -> None:
    """Export the spans still buffered and turn tracing off (at exit the SDK does this by
    itself)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def tracer() -> Any:
    """OpenTelemetry's tracer while tracing is on, else one whose spans record nothing."""
    return _OFF if _provider is None else _provider.get_tracer(_TRACER_NAME)


def current_span() -> Any:
    """The span of the code running now, to add events to."""
    if _provider is None:
        return _NO_SPAN
    from opentelemetry import trace

    return trace.get_current_span()


@contextmanager
def server_span(name: str, headers: Iterable[tuple[bytes, bytes]]) -> Iterator[Any]:
    """The current span of an incoming HTTP request (its ASGI headers), a child of the
    caller's span when the request carries W3C `traceparent`."""
    if _provider is None:
        yield _NO_SPAN
        return
    from opentelemetry import propagate, trace

    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
    with tracer().start_as_current_span(
        name, context=propagate.extract(carrier), kind=trace.SpanKind.SERVER
    ) as span:
        yield span


def traced_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """`headers` with the current span's W3C `traceparent` added, for a request to another
    traced service (vLLM) while tracing is on."""
    if _provider is None:
        return headers
    from opentelemetry import propagate

    carrier = dict(headers)
    propagate.inject(carrier)
    return carrier


def otlp_traces_endpoint() -> str | None:
    """Where this process exports spans while tracing is on (the OTLP/HTTP traces URL that
    the exporter derives from OTEL_*), for the vLLM servers it launches."""
    if _provider is None:
        return None
    if endpoint := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return endpoint
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return f"{base.rstrip('/')}/v1/traces"
