"""Tracing over OTLP/HTTP, as a collector receives it: a real gateway on a tiny random model
exports the span tree of one chat request (continuing the client's trace) and of one
explanation to an OTLP collector running in this process."""

import gzip
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from core import tracing
from serving.vllm.server import LaunchSpec
from tests.serving.conftest import LIMITS, running_gateway

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the `otel` extra")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

QUESTION = [{"role": "user", "content": "What colour is the sky?"}]


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP traces receiver (`POST /v1/traces`, protobuf) keeping every span."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.spans: list[Span] = []
        self.services: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1/traces"


class _Receiver(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    self.server.services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend(scope_spans.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    """A collector, and this process's tracing configured from OTEL_* to export to it."""
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", server.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
    assert tracing.configure("llm-serve")
    try:
        yield server
    finally:
        tracing.shutdown()
        server.shutdown()
        server.server_close()


def _descendants(spans: list[Span], root: Span) -> list[Span]:
    found, parents = [], {root.span_id}
    for span in sorted(spans, key=lambda s: s.start_time_unix_nano):
        if span.parent_span_id in parents:
            found.append(span)
            parents.add(span.span_id)
    return found


def test_one_chat_request_exports_its_span_tree(
    tmp_path: Path, random_model_dir: Path, collector: Collector
) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    with running_gateway(tmp_path, random_model_dir, limits=LIMITS) as gw:
        # vLLM servers the gateway launches export to the same collector.
        assert tracing.otlp_traces_endpoint() == collector.url
        reply = httpx.post(
            f"{gw.base_url}/v1/chat/completions",
            json={"model": "demo", "messages": QUESTION, "max_tokens": 4, "temperature": 0},
            headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        explained = httpx.post(
            f"{gw.base_url}/v1/explanations",
            json={
                "model": "demo",
                "messages": QUESTION,
                "method": "feature_ablation",
                "target": "a",
            },
            timeout=60,
        )
        assert explained.status_code == 200, explained.text
    tracing.shutdown()  # exports what is buffered

    assert collector.services == {"gateway-under-test"}
    spans = [s for s in collector.spans if s.trace_id.hex() == trace_id]
    (server,) = [s for s in spans if s.parent_span_id.hex() == client_span]
    assert server.name == "POST /v1/chat/completions"
    assert server.kind == Span.SpanKind.SPAN_KIND_SERVER
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["llmops.request_id"].string_value == reply.headers["x-request-id"]

    tree = _descendants(spans, server)
    by_name = {s.name: s for s in tree}
    assert sorted(by_name) == ["engine", "queue", "resolve", "traffic.write"]
    assert len(tree) == 4  # one generation, one traffic record
    for name in ("resolve", "engine", "traffic.write"):
        assert by_name[name].parent_span_id == server.span_id, name
    engine, queue = by_name["engine"], by_name["queue"]
    assert queue.parent_span_id == engine.span_id
    assert engine.start_time_unix_nano <= queue.start_time_unix_nano
    assert queue.end_time_unix_nano <= engine.end_time_unix_nano
    assert server.start_time_unix_nano <= by_name["resolve"].start_time_unix_nano
    assert by_name["traffic.write"].end_time_unix_nano <= server.end_time_unix_nano

    # A request without a traceparent starts a trace of its own.
    (explain,) = [s for s in collector.spans if s.name == "explain"]
    (explain_server,) = [s for s in collector.spans if s.span_id == explain.parent_span_id]
    assert explain_server.name == "POST /v1/explanations"
    assert not explain_server.parent_span_id and explain_server.trace_id.hex() != trace_id


def test_vllm_joins_the_trace(collector: Collector, tmp_path: Path) -> None:
    """Requests to vLLM carry the trace context, and the vLLM servers the gateway launches
    export their own spans to the same collector, over OTLP/HTTP as the gateway does."""
    with tracing.tracer().start_as_current_span("engine") as span:
        headers = tracing.traced_headers({"Authorization": "Bearer k"})
    context = span.get_span_context()
    assert headers["Authorization"] == "Bearer k"
    assert headers["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    spec = LaunchSpec(model_path=tmp_path, served_name="demo:1", port=8000)
    command = spec.command()
    assert command[command.index("--otlp-traces-endpoint") + 1] == collector.url
    assert spec.environment()["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"


def test_tracing_is_off_without_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
    ):
        monkeypatch.delenv(name, raising=False)
    assert not tracing.configure("llm-serve")
    assert tracing.otlp_traces_endpoint() is None
    assert tracing.traced_headers({"a": "b"}) == {"a": "b"}
    assert "--otlp-traces-endpoint" not in LaunchSpec(Path("m"), "demo:1", 8000).command()
    with tracing.tracer().start_as_current_span("anything") as span:
        span.set_attribute("key", "value")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing.configure("llm-serve")
