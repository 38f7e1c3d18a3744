"""The drift monitor: its tests keep their false-alarm rate on stationary data and see a
shift; on a traffic log written by a real gateway it raises drift when the traffic moves to
an unknown task, stores each check, exports the score, and the CLI lists and draws them."""

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from core.configs import load_yaml_config
from core.database import open_database, utc_now
from core.errors import StackError
from evals.drift.config import DriftConfig
from evals.drift.embeddings import EmbeddingCache
from evals.drift.monitor import DriftMonitor
from evals.drift.signals import Sample, compare, decide
from evals.tables import CHAIN as EVALS_CHAIN
from finetune.demo.skills import SKILLS, make_row, write_jsonl
from serving.tables import CHAIN as SERVING_CHAIN
from serving.traffic import TrafficLog, TrafficRecord
from tests.serving.conftest import LIMITS, RunningGateway, running_gateway

CONFIG = DriftConfig()


def _cluster(rng: np.random.Generator, centre: np.ndarray, n: int) -> np.ndarray:
    points = centre + 0.35 * rng.standard_normal((n, len(centre)))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def _traffic(rng: np.random.Generator, centres: list[np.ndarray], n: int, new: float = 0.0):
    """Embeddings and prompt lengths of `n` requests from known tasks, `new` of them from an
    unknown one (the last centre)."""
    unknown = rng.random(n) < new
    task = np.where(unknown, len(centres) - 1, rng.integers(0, len(centres) - 1, n))
    embeddings = np.stack([_cluster(rng, centres[t], 1)[0] for t in task])
    return Sample(embeddings, prompt_tokens=rng.poisson(20, n) + 5 * unknown)


def test_stationary_windows_rarely_alarm_and_a_shift_is_seen() -> None:
    rng = np.random.default_rng(7)
    centres = list(rng.standard_normal((4, 64)))  # three known tasks, one unknown
    reference = _traffic(rng, centres, 500)
    alarms = sum(
        decide(compare(reference, _traffic(rng, centres, 200), CONFIG), CONFIG).drifted
        for _ in range(200)
    )
    assert alarms <= 4  # alpha = 1% per window

    shifted = compare(reference, _traffic(rng, centres, 200, new=0.3), CONFIG)
    verdict = decide(shifted, CONFIG)
    assert verdict.drifted and "embedding" in verdict.alarms
    assert verdict.score > 0.2


def test_finish_reasons_and_ratings_are_signals() -> None:
    rng = np.random.default_rng(1)
    embeddings = _cluster(rng, rng.standard_normal(16), 300)
    reference = Sample(
        embeddings[:150], finish_reasons=["stop"] * 140 + ["length"] * 10,
        ratings=rng.choice([4, 5], 60),
    )  # fmt: skip
    window = Sample(
        embeddings[150:], finish_reasons=["stop"] * 90 + ["length"] * 60,
        ratings=rng.choice([1, 2, 5], 60),
    )  # fmt: skip
    verdict = decide(compare(reference, window, CONFIG), CONFIG)
    assert set(verdict.alarms) == {"finish_reason", "feedback"}


def test_a_tiny_shift_in_a_huge_window_is_not_drift() -> None:
    rng = np.random.default_rng(2)
    embeddings = _cluster(rng, rng.standard_normal(16), 100)
    results = compare(
        Sample(embeddings, prompt_tokens=rng.normal(100, 10, 200_000)),
        Sample(embeddings, prompt_tokens=rng.normal(100.5, 10, 200_000)),
        CONFIG,
    )
    tokens = next(r for r in results if r.signal == "prompt_tokens")
    assert tokens.p_value < 1e-6 and tokens.effect < CONFIG.min_effect
    assert not decide(results, CONFIG).drifted


def test_a_drift_config_with_an_unknown_key_names_the_nearest(tmp_path: Path) -> None:
    path = tmp_path / "drift.yaml"
    path.write_text("windw: 100\n")
    with pytest.raises(StackError, match="unknown key 'windw'; did you mean 'window'"):
        load_yaml_config(path, DriftConfig, "drift config")
    path.write_text("window: 30\nmin_window: 50\n")
    with pytest.raises(StackError, match=r"min_window \(50\) exceeds window \(30\)"):
        load_yaml_config(path, DriftConfig, "drift config")


def test_checks_and_the_embedding_cache_on_both_databases(database_url: str) -> None:
    traffic = TrafficLog(open_database(database_url, SERVING_CHAIN), linger_s=0.0)
    engine = open_database(database_url, EVALS_CHAIN)
    monitor = DriftMonitor(traffic, engine, lambda version, messages: ("", 0))
    rng = random.Random(5)
    for i in range(160):
        skill = SKILLS["reverse" if i >= 100 else rng.choice(["add", "upper"])]
        question = skill.prompt(skill.sample(rng))
        traffic.record(
            TrafficRecord(
                created_at=utc_now(), request_id=f"r{i}", key_id=None, endpoint="chat",
                model="demo", version="demo:1", backend="local", prompt=question, output="",
                prompt_tokens=len(question) // 4, completion_tokens=3, latency_ms=20,
                finish_reason="stop",
            )
        )  # fmt: skip
    config = DriftConfig(window=60, min_window=30, reference={"requests": 100})
    check = monitor.check("demo:1", config)
    assert check is not None and check.drifted and "embedding" in check.alarms
    assert monitor.store.get(check.id) == check
    assert monitor.store.history("demo") == [check]
    # a new process finds the vectors in the database: nothing is embedded again
    monitor.embeddings = EmbeddingCache(engine, embed=_refuse)
    assert monitor.check("demo:1", config).signals == check.signals
    traffic.close()


def _refuse(texts: list[str]) -> np.ndarray:
    raise AssertionError(f"embedded {len(texts)} texts again")


# -- on a real gateway's traffic log ----------------------------------------------------------

DRIFT = {"every_s": 3600, "window": 40, "min_window": 20, "reference": {"requests": 60}}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def watched(home: Path, random_model_dir: Path) -> Iterator[RunningGateway]:
    with running_gateway(home, random_model_dir, limits=LIMITS, drift=DRIFT) as gw:
        yield gw


def _ask(gw: RunningGateway, skills: list[str], n: int, seed: int) -> None:
    rng = random.Random(seed)
    client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="unused", max_retries=0)

    def one(i: int) -> None:
        skill = SKILLS[skills[i % len(skills)]]
        value = skill.sample(random.Random(rng.random() + i))
        messages = [{"role": "user", "content": skill.prompt(value)}]
        client.chat.completions.create(model="demo", messages=messages, max_tokens=4)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMOPS_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "evals", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_the_monitor_sees_traffic_move_to_an_unknown_task(
    watched: RunningGateway, home: Path, tmp_path: Path
) -> None:
    gateway = watched.gateway
    since = utc_now() - timedelta(minutes=1)
    known = ["add", "upper", "lookup"]
    _ask(watched, known, 100, seed=0)  # the reference (first 60), then a stationary window
    [calm] = gateway.check_drift(since)
    assert (calm.version, calm.window_n, calm.reference["n"]) == ("demo:1", 40, 60)
    assert not calm.drifted, calm.signals

    _ask(watched, ["reverse", "sort"], 40, seed=1)  # the newest window: a task never seen
    [moved] = gateway.check_drift(since)
    assert moved.drifted and "embedding" in moved.alarms
    assert moved.signal("embedding").effect > calm.signal("embedding").effect

    metrics = httpx.get(f"{watched.base_url}/metrics").text
    assert 'llmops_drift_alarm{model="demo",version="demo:1"} 1.0' in metrics
    assert f'llmops_drift_score{{model="demo",version="demo:1"}} {moved.score}' in metrics

    listed = _cli(home, "drift", "list", "demo", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [c["id"] for c in json.loads(listed.stdout)] == [calm.id, moved.id]
    shown = _cli(home, "drift", "show", moved.id)
    assert "DRIFT (" in shown.stdout and "embedding" in shown.stdout

    html, png = tmp_path / "drift.html", tmp_path / "drift.png"
    drawn = _cli(home, "drift", "report", "demo", "--html", str(html), "--png", str(png))
    assert drawn.returncode == 0, drawn.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "demo:1" in html.read_text() and "data:image/png;base64," in html.read_text()

    # the same check from the command line, against the version's training-like data
    data = tmp_path / "train.jsonl"
    rng = random.Random(3)
    write_jsonl(data, [make_row(SKILLS[s], SKILLS[s].sample(rng)) for s in known * 30])
    checked = _cli(home, "monitor", "demo", "--reference-data", str(data), "--json")
    assert checked.returncode == 0, checked.stderr
    against_data = json.loads(checked.stdout)
    assert against_data["reference"] == {"kind": "data", "files": [str(data)], "n": 90}
    assert against_data["drifted"] and "embedding" in against_data["alarms"]


def test_monitor_refuses_bad_input(watched: RunningGateway, home: Path, tmp_path: Path) -> None:
    unknown = _cli(home, "monitor", "nosuchmodel")
    assert unknown.returncode == 2 and "nosuchmodel" in unknown.stderr
    bad = tmp_path / "drift.yaml"
    bad.write_text("alpah: 0.05\n")
    refused = _cli(home, "monitor", "demo", "--config", str(bad))
    assert refused.returncode == 2 and "did you mean 'alpha'" in refused.stderr
    nothing = _cli(home, "drift", "report", "nosuchmodel", "--png", str(tmp_path / "x.png"))
    assert nothing.returncode == 2 and "no drift checks" in nothing.stderr
