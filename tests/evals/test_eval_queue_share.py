"""One API key cannot hold a gateway's evaluation queue: with one worker and four places in
the queue, a key may have two runs waiting (half the queue) and the next is refused with a 429
that names the limit, while another key still gets its run queued. Through the `openai` SDK
on a running gateway."""

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.serving.conftest import LIMITS, RunningGateway, running_gateway

HOLD = threading.Event()  # the running run waits on it, so that the others stay queued
HOLD.set()


def held_metric(prediction: str, reference: str) -> float:
    assert HOLD.wait(timeout=120), "the test never let the run go"
    return 1.0


HELD = """
name: held
tasks:
  - name: first
    data: {demo: upper, count: 2}
    generation: {max_tokens: 2}
    metrics: ["tests.evals.test_eval_queue_share:held_metric"]
"""
QUICK = """
name: quick
tasks:
  - name: add
    data: {demo: add, count: 2}
    generation: {max_tokens: 2}
    metrics: [exact_match]
"""


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path
) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("suites")
    (folder / "held.yaml").write_text(HELD)
    (folder / "quick.yaml").write_text(QUICK)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLMOPS_EVALS_SUITES_DIR", str(folder))
        env.setenv("LLMOPS_EVALS_MAX_RUNNING_RUNS", "1")
        env.setenv("LLMOPS_EVALS_MAX_QUEUED_RUNS", "4")
        home = tmp_path_factory.mktemp("queue-share-home")
        with running_gateway(home, random_model_dir, limits=LIMITS) as running:
            yield running


def _client(gw: RunningGateway, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=secret, max_retries=0)


def _start(client: openai.OpenAI, eval_id: str):
    return client.evals.runs.create(eval_id, data_source={"type": "completions", "model": "demo"})


def test_one_key_may_hold_half_the_queue(gw: RunningGateway) -> None:
    alice = _client(gw, gw.gateway.keys.create("alice")[1])
    bob = _client(gw, gw.gateway.keys.create("bob")[1])
    HOLD.clear()
    try:
        running = _start(alice, "held")
        deadline = time.monotonic() + 120
        while alice.evals.runs.retrieve(running.id, eval_id="held").status != "in_progress":
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.05)
        waiting = [_start(alice, "quick") for _ in range(2)]  # half of the four places
        assert {alice.evals.runs.retrieve(r.id, eval_id="quick").status for r in waiting} == {
            "queued"
        }

        with pytest.raises(openai.RateLimitError) as refused:
            _start(alice, "quick")
        assert refused.value.code == "too_many_eval_runs_for_key"
        assert "max_queued_runs_per_key: 2" in refused.value.message
        assert "'alice' already has 2 evaluation runs waiting" in refused.value.message
        assert refused.value.response.headers["retry-after"]
        body = json.loads(refused.value.response.text)
        assert body["error"]["type"] and body["error"]["code"] == "too_many_eval_runs_for_key"

        theirs = _start(bob, "quick")  # room is left in the queue for another key
        assert bob.evals.runs.retrieve(theirs.id, eval_id="quick").status == "queued"
    finally:
        HOLD.set()
    deadline = time.monotonic() + 120
    while gw.gateway.evaluations.background.active:
        assert time.monotonic() < deadline, "the runs never finished"
        time.sleep(0.1)
    assert alice.evals.runs.retrieve(running.id, eval_id="held").status == "completed"
