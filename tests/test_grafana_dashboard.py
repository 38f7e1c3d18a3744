"""deploy/grafana/llmops-gateway.json: a dashboard Grafana can load, whose every query asks
for metrics, and labels, that a running gateway's /metrics exposes."""

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.database import utc_now
from evals.continuous.events import LoopEvents, Step
from evals.drift.checks import DriftCheck, DriftStore, new_check_id
from tests.serving.conftest import running_gateway

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "llmops-gateway.json"
SUFFIXES = {  # the series each metric type is exposed as
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)(?![\w:])\s*(\{[^}]*\})?(?!\s*\()")
_LABEL_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exposed(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path
) -> dict[str, set[str]]:
    """Each series name a gateway's /metrics exposes, with the labels its samples carry,
    after a request served, one failed, a drift check and a loop cycle."""
    with running_gateway(tmp_path_factory.mktemp("home"), random_model_dir) as running:
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        url = f"{running.base_url}/v1/chat/completions"
        assert httpx.post(url, json={"model": "demo", **chat}, timeout=60).status_code == 200
        assert httpx.post(url, json={"model": "nope", **chat}, timeout=60).status_code == 404
        metrics = running.gateway.metrics  # as the drift watcher sets them
        metrics.drift_score.labels("demo", "1").set(0.1)
        metrics.drift_alarm.labels("demo", "1").set(0)
        evals_database = running.gateway.evaluations.evaluations.runs.engine
        LoopEvents(evals_database).add("cycle-1", "demo", "policy", Step.DRIFT)
        DriftStore(evals_database).record(
            DriftCheck(
                id=new_check_id(), created_at=utc_now(), model="demo", version="demo:1",
                window_start=utc_now(), window_end=utc_now(), window_n=0, reference={},
                signals=[], score=0.1, drifted=False, alarms=[],
            )
        )  # fmt: skip
        text = httpx.get(f"{running.base_url}/metrics").text
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            found.setdefault(family.name + suffix, set())
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def _targets(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def _parse(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metrics a PromQL expression selects, each with the labels its matchers name, and
    the labels it groups by."""
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors such as [$__rate_interval]
    grouping = {label.strip() for found in _GROUPING.findall(expr) for label in found.split(",")}
    expr = _GROUPING.sub("", expr)
    metrics: dict[str, set[str]] = {}
    for name, selector in _SELECTOR.findall(expr):
        if name not in _KEYWORDS:
            metrics.setdefault(name, set()).update(_LABEL_MATCHER.findall(selector or ""))
    return metrics, grouping - {""}


def test_the_dashboard_has_what_grafana_requires(dashboard: dict) -> None:
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["type"] and panel["title"] and panel["targets"], panel
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "hwxy") and grid["x"] + grid["w"] <= 24
        covered = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']!r} overlaps another panel"
        cells |= covered
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids) and all(t["expr"] for t in panel["targets"])


def test_the_parser_reads_selectors_and_grouping() -> None:
    metrics, grouping = _parse(
        'histogram_quantile(0.9, sum by (le, model) (rate(x_bucket{model=~"$m", a!="1"}[5m])))'
        " / on (model) sum(y_total) and z"
    )
    assert metrics == {"x_bucket": {"model", "a"}, "y_total": set(), "z": set()}
    assert grouping == {"le", "model"}


def test_every_query_asks_for_what_the_gateway_exposes(
    dashboard: dict, exposed: dict[str, set[str]]
) -> None:
    queries = _targets(dashboard)
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    for definition in variables:
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", definition).groups()
        queries.append((definition, f"{metric}{{{label}!=''}}"))
    for title, expr in queries:
        metrics, grouping = _parse(expr)
        assert metrics, f"{title!r}: no metric in {expr!r}"
        if any(name.startswith("vllm:") for name in metrics):
            continue  # this gateway has no vLLM: tests/serving/test_metrics_exposed.py checks them
        for name, labels in metrics.items():
            assert name in exposed, f"{title!r}: the gateway exposes no {name}"
            assert labels <= exposed[name], f"{title!r}: {name} has no label {labels}"
        assert grouping <= set().union(*(exposed[n] for n in metrics)), f"{title!r}: {grouping}"
        if "histogram_quantile" in expr:
            assert "le" in grouping and all(n.endswith("_bucket") for n in metrics), title


def test_it_shows_what_operators_watch(dashboard: dict) -> None:
    exprs = " ".join(expr for _, expr in _targets(dashboard))
    for metric in (
        "llmops_e2e_request_latency_seconds_bucket",
        "llmops_time_to_first_token_seconds_bucket",
        "llmops_completion_tokens_total",
        "llmops_request_errors_total",
        "llmops_queue_depth",
        "llmops_drift_score",
        "llmops_drift_alarm",
        "llmops_finetune_jobs",
        "llmops_eval_runs",
        "vllm:num_requests_running",
    ):
        assert metric in exprs
