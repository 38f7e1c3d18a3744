"""What `/metrics` shows beyond the gateway's own requests: the vLLM replicas' metrics, labelled
by model and replica, and gauges of the jobs, eval runs, drift checks and loop cycles in the
stack's database."""

import asyncio
import importlib.util
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.database import utc_now
from evals.continuous.events import LoopEvents, Step
from evals.drift.checks import DriftCheck, DriftStore, new_check_id
from evals.runs import RunStatus
from finetune.demo.random_model import build_random_model
from finetune.jobs import JobStatus
from finetune.kinds import FINE_TUNE
from serving.config import VllmConfig
from serving.metrics import GatewayMetrics
from serving.state_metrics import StateCollector
from serving.vllm.engine import VllmEngine, free_port
from serving.vllm.server import VllmServer
from tests.serving.conftest import RunningGateway, running_gateway
from tests.test_grafana_dashboard import DASHBOARD, _parse

KEY_ID = "key_0123456789abcdef"
VLLM_TEXT = f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="demo:1"}} 2.0
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{{max_lora="4",running_lora_adapters="demo-ft-{KEY_ID}:1",waiting_lora_adapters=""}} 1.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{{engine="0",le="1.0",model_name="demo:1"}} 1.0
vllm:e2e_request_latency_seconds_bucket{{engine="0",le="+Inf",model_name="demo:1"}} 1.0
vllm:e2e_request_latency_seconds_count{{engine="0",model_name="demo:1"}} 1.0
vllm:e2e_request_latency_seconds_sum{{engine="0",model_name="demo:1"}} 0.5
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 9.0
"""  # noqa: E501


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _value(text: str, name: str, **labels: str) -> float:
    return sum(v for found, v in _samples(text, name) if labels.items() <= found.items())


def test_replicas_metrics_are_merged_labelled_and_pseudonymous() -> None:
    text = GatewayMetrics().render([("demo:1", "0", VLLM_TEXT), ("demo:1", "1", VLLM_TEXT)])
    text = text.decode()
    running = _samples(text, "vllm:num_requests_running")
    assert sorted(labels["replica"] for labels, _ in running) == ["0", "1"]
    assert all(labels["model"] == "demo:1" for labels, _ in running)
    assert text.count("# TYPE vllm:e2e_request_latency_seconds histogram") == 1
    assert _value(text, "vllm:e2e_request_latency_seconds_count", replica="1") == 1.0
    assert "python_gc" not in text  # the replicas' process metrics are theirs
    assert KEY_ID not in text
    (lora, _), _ = _samples(text, "vllm:lora_requests_info")
    assert lora["running_lora_adapters"].startswith("demo-ft-owner-")


class _FakeVllm(BaseHTTPRequestHandler):
    """Answers /metrics with VLLM_TEXT, to the right key only."""

    def do_GET(self) -> None:
        ok = self.path == "/metrics" and self.headers["Authorization"] == "Bearer secret"
        body = VLLM_TEXT.encode() if ok else b'{"error": "Unauthorized"}'
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_vllm() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_replica_that_does_not_answer_is_counted_and_skipped(
    fake_vllm: str, tmp_path: Path
) -> None:
    async def scrape() -> list[tuple[str, str, str | None]]:
        engine = VllmEngine(VllmConfig(), tmp_path)
        await engine.start()
        try:
            servers = [
                VllmServer(fake_vllm, api_key="secret"),
                VllmServer(f"http://127.0.0.1:{free_port()}", api_key="secret"),  # nobody there
                VllmServer(fake_vllm, api_key="wrong"),
                VllmServer(fake_vllm, api_key="secret"),  # starting: not read
            ]
            for server in servers[:3]:
                server.ready = True
            engine._groups["demo:1"] = servers
            return await engine.replica_metrics(timeout_s=5)
        finally:
            await engine.aclose()

    replicas = asyncio.run(scrape())
    assert [(index, text is not None) for _, index, text in replicas] == [
        ("0", True),
        ("1", False),
        ("2", False),
    ]
    text = GatewayMetrics().render(replicas).decode()
    assert {labels["replica"] for labels, _ in _samples(text, "vllm:num_requests_running")} == {"0"}
    assert _value(text, "llmops_vllm_scrape_errors_total", model="demo:1", replica="1") == 1
    assert _value(text, "llmops_vllm_scrape_errors_total", model="demo:1", replica="2") == 1


class _Counting:
    """A store whose every method answers `answer` and counts its calls."""

    def __init__(self, answer: object):
        self.answer = answer
        self.calls = 0

    def __getattr__(self, name: str) -> Callable[[], object]:
        def method() -> object:
            self.calls += 1
            return self.answer

        return method


def test_state_gauges_are_read_once_per_ttl() -> None:
    jobs = _Counting({("fine-tune", JobStatus.RUNNING): 2})
    collector = StateCollector(jobs, _Counting({}), _Counting({}), _Counting([]), ttl_s=60)  # type: ignore[arg-type]
    first = {f.name: f for f in collector.collect()}
    assert {f.name for f in collector.collect()} == set(first) and jobs.calls == 1
    by_labels = {tuple(s.labels.values()): s.value for s in first["llmops_finetune_jobs"].samples}
    assert by_labels[("fine-tune", "running")] == 2
    assert by_labels[("fine-tune", "queued")] == 0  # every status is there, if only as 0
    assert {s.labels["status"] for s in first["llmops_eval_runs"].samples} == set(RunStatus)


def _scrape_until(url: str, done: Callable[[str], bool], timeout: float = 30.0) -> str:
    """/metrics once `done` holds for it (the state gauges are cached for a few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        if done(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_jobs_eval_runs_drift_and_loop_cycles_are_gauged(gateway_server: RunningGateway) -> None:
    url, gateway = gateway_server.base_url, gateway_server.gateway
    before = httpx.get(f"{url}/metrics").text
    jobs = gateway.jobs.store
    job = jobs.create(kind=FINE_TUNE, model="demo", recipe={}, created_by="tests")
    # Cancelled at once, so that the dispatcher never starts a worker for it.
    assert jobs.transition(job.id, (JobStatus.QUEUED,), JobStatus.CANCELLED)
    runs = gateway.evaluations.evaluations.runs
    run = runs.create(
        suite="skills", suite_digest="sha256:0", model="demo", version="demo:1",
        target="in-process", created_by="tests",
    )  # fmt: skip
    runs.fail(run, "a probe")
    model = f"metrics-probe-{job.id}"
    DriftStore(runs.engine).record(
        DriftCheck(
            id=new_check_id(), created_at=utc_now(), model=model, version=f"{model}:1",
            window_start=utc_now(), window_end=utc_now(), window_n=0, reference={},
            signals=[], score=0.0, drifted=False, alarms=[],
        )
    )  # fmt: skip
    loop = LoopEvents(runs.engine)
    for cycle in ("cycle-a", "cycle-b"):
        loop.add(cycle, model, "policy", Step.DRIFT)
    loop.add("cycle-b", model, "policy", Step.PROMOTED)

    def cancelled(text: str) -> float:
        return _value(text, "llmops_finetune_jobs", kind=FINE_TUNE, status="cancelled")

    text = _scrape_until(url, lambda t: cancelled(t) > cancelled(before))
    assert cancelled(text) == cancelled(before) + 1
    failed = _value(before, "llmops_eval_runs", status="failed")
    assert _value(text, "llmops_eval_runs", status="failed") == failed + 1
    assert _value(text, "llmops_loop_cycles", model=model, step="drift") == 2
    assert _value(text, "llmops_loop_cycles", model=model, step="promoted") == 1
    checked = _value(text, "llmops_drift_last_check_timestamp_seconds", model=model)
    assert abs(checked - time.time()) < 120
    assert _value(text, "llmops_loop_last_step_timestamp_seconds", model=model, step="drift")


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_replicas_metrics_are_on_the_gateways(tmp_path: Path) -> None:
    """One real vLLM server behind the gateway; also checks the dashboard's vLLM queries
    (tests/test_grafana_dashboard.py checks the others, on a gateway without vLLM)."""
    model = build_random_model(tmp_path / "model", hidden_size=128)
    vllm = {
        "models": [
            {
                "model": "demo",
                "max_model_len": 256,
                "extra_args": ["--dtype", "float32"],
                "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                "startup_timeout_s": 600,
            }
        ]
    }
    with running_gateway(tmp_path / "home", model, vllm=vllm) as gw:
        client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="unused", timeout=900)
        client.completions.create(model="demo", prompt="Sort: dcba", max_tokens=4)
        text = httpx.get(f"{gw.base_url}/metrics", timeout=30).text
    assert _value(text, "vllm:prompt_tokens_total", model="demo:1", replica="0") > 0
    assert _samples(text, "vllm:num_requests_running")
    assert not _samples(text, "llmops_vllm_scrape_errors_total")
    exposed: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            metrics, grouping = _parse(target["expr"])
            if any(name.startswith("vllm:") for name in metrics):
                for name, labels in metrics.items():
                    assert name in exposed and labels <= exposed[name], (panel["title"], name)
                assert grouping <= set().union(*(exposed[n] for n in metrics)), panel["title"]
