"""Prometheus metrics of the gateway, per model and backend."""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "backend")
        self.requests = Counter(
            "llmops_requests",
            "Requests by model, backend and endpoint.",
            (*labels, "endpoint"),
            registry=self.registry,
        )
        self.errors = Counter(
            "llmops_request_errors",
            "Failed requests by HTTP status code.",
            ("model", "code"),
            registry=self.registry,
        )
        self.ttft = Histogram(
            "llmops_time_to_first_token_seconds",
            "Time to the first generated text.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "llmops_e2e_request_latency_seconds",
            "Time from request to last token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "llmops_prompt_tokens", "Prompt tokens.", labels, registry=self.registry
        )
        self.completion_tokens = Counter(
            "llmops_completion_tokens", "Generated tokens.", labels, registry=self.registry
        )
        self.traffic_dropped = Counter(
            "llmops_traffic_records_dropped",
            "Traffic-log records not stored (queue full, or the database refused them).",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "llmops_queue_depth",
            "Requests waiting for a batch slot.",
            ("backend",),
            registry=self.registry,
        )

        self.explanations_running = Gauge(
            "llmops_explanations_running",
            "Explanations running forward passes.",
            registry=self.registry,
        )

        self.drift_score = Gauge(
            "llmops_drift_score",
            "The newest drift check's score: the largest effect among its deciding signals "
            "(0 = like the reference, 1 = disjoint).",
            ("model", "version"),
            registry=self.registry,
        )
        self.drift_alarm = Gauge(
            "llmops_drift_alarm",
            "1 when the newest drift check found drift.",
            ("model", "version"),
            registry=self.registry,
        )

    def watch_queue(self, backend: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(backend).set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
