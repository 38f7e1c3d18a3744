"""Prometheus metrics of the gateway, per model and backend, followed by those of the vLLM
servers it supervises, labelled by model and replica."""

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from serving.keys import KEY_ID_PATTERN

_KEY_ID = re.compile(KEY_ID_PATTERN.encode())
log = logging.getLogger(__name__)
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
        self.vllm_scrape_errors = Counter(
            "llmops_vllm_scrape_errors",
            "Reads of a vLLM replica's /metrics that failed (no answer in time, or not "
            "Prometheus' text format); its metrics are missing from that scrape.",
            ("model", "replica"),
            registry=self.registry,
        )

    def watch_queue(self, backend: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(backend).set_function(depth)

    def render(self, replicas: Sequence[tuple[str, str, str | None]] = ()) -> bytes:
        """Prometheus' text format: the gateway's metrics, then the `vllm:` metrics of each
        (base version, replica index, `/metrics` text) in `replicas`, with `model` and
        `replica` labels added. The adapters an API key trains are registered under a model
        named after the key (`demo-ft-key_...:1`, see `finetune.registration`), which vLLM's
        adapter labels (`running_lora_adapters`, ...) repeat; whoever reads the metrics sees
        a pseudonym of the key's id instead (the same on every gateway replica)."""
        upstream = self._vllm_families(replicas)  # first: it counts the failed reads
        text = generate_latest(self.registry) + generate_latest(_Families(upstream))
        return _KEY_ID.sub(_pseudonym, text)

    def _vllm_families(self, replicas: Sequence[tuple[str, str, str | None]]) -> list[Metric]:
        """One family per metric name, holding the samples of every replica (Prometheus
        refuses a name given twice)."""
        families: dict[str, Metric] = {}
        for model, replica, text in replicas:
            try:
                parsed = list(text_string_to_metric_families(text)) if text is not None else None
            except ValueError as err:
                log.debug("vLLM replica %s of %s gave unreadable metrics: %s", replica, model, err)
                parsed = None
            if parsed is None:
                self.vllm_scrape_errors.labels(model, replica).inc()
                continue
            added = {"model": model, "replica": replica}
            for family in parsed:
                if not family.name.startswith("vllm:"):
                    continue  # the server process's own (python_gc_*, http_*)
                merged = families.setdefault(
                    family.name,
                    Metric(family.name, family.documentation, family.type, family.unit),
                )
                merged.samples += [s._replace(labels={**s.labels, **added}) for s in family.samples]
        return list(families.values())


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]):
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _pseudonym(key_id: re.Match[bytes]) -> bytes:
    return b"owner-" + hashlib.sha256(key_id[0]).hexdigest()[:12].encode()
