"""Leased evaluation runs on SQLite and PostgreSQL: a worker whose run was taken over
writes nothing more, and a run interrupted after some examples goes on, under its next
worker, after the examples already scored; a run stopped with its gateway is finished by
the next one."""

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import openai
import pytest

from core.leases import LeaseLost
from evals.background import Resumed
from evals.runner import score_suite
from evals.runs import RunStatus, RunStore
from evals.suites import Suite, load_suite
from evals.targets import Answer, Target
from tests.evals.test_evals_api import HELD, HOLD, _start, _wait
from tests.serving.conftest import running_gateway

SUITE = """
name: small
tasks:
  - name: add
    data: {demo: add, count: 7}
    generation: {max_tokens: 4}
    metrics: [exact_match]
  - name: colours
    data: {path: colours.jsonl}
    metrics: [choice_accuracy]
"""
COLOURS = (
    '{"messages": [{"role": "user", "content": "zorblax?"}], "choices": ["a", "b"], "answer": 1}\n'
)
LONG, GONE = timedelta(seconds=60), timedelta(seconds=-1)


class Crash(Exception):
    pass


class Scripted(Target):
    """A model that answers every prompt with its last message upper-cased (and scores each
    continuation by its length), noting what it was asked; it crashes on its call number
    `crash_at` to `answer`, as a stopped process would."""

    label = version_ref = "scripted"

    def __init__(self, crash_at: int | None = None):
        self.crash_at = crash_at
        self.asked: list[str] = []
        self.answers = 0

    async def answer(self, prompts, generation, progress):
        if self.answers == self.crash_at:
            raise Crash
        self.answers += 1
        self.asked += [p[-1]["content"] for p in prompts]
        progress(len(prompts))
        return [Answer(p[-1]["content"].upper(), 2, 0.5) for p in prompts]

    async def loglik(self, prompts, continuations, progress):
        self.asked += list(continuations)
        progress(len(prompts))
        return [(-float(len(c)), len(c)) for c in continuations]


@pytest.fixture
def suite(tmp_path: Path) -> Suite:
    (tmp_path / "colours.jsonl").write_text(COLOURS)
    (tmp_path / "small.yaml").write_text(SUITE)
    return load_suite(str(tmp_path / "small.yaml"), tmp_path)


def _queued(store: RunStore, suite: Suite):
    return store.create(
        suite=suite.name, suite_digest=suite.digest, model="demo", version="demo:1",
        target="in process", created_by="tests", status=RunStatus.QUEUED,
    )  # fmt: skip


def test_an_interrupted_run_goes_on_after_the_examples_it_scored(
    database_url: str, tmp_path: Path, suite: Suite
) -> None:
    store = RunStore.open(database_url, tmp_path)
    run = _queued(store, suite)
    acquired = store.acquire(run.id, "worker-a", GONE)  # its process will stop
    assert acquired is not None
    first = store.start(acquired)
    assert first is not None and first.status is RunStatus.RUNNING

    crashing = Scripted(crash_at=2)  # after two batches of three: six of seven examples
    with pytest.raises(Crash):
        asyncio.run(score_suite(suite, Resumed(crashing, store, first, 3), progress=False))
    assert len(crashing.asked) == 6 and len(store.progress(first)) == 6

    [second] = store.take_over("worker-b", LONG, limit=10)
    assert (second.id, second.lease_owner) == (run.id, "worker-b")
    assert second.lease_epoch == first.lease_epoch + 1 and second.status is RunStatus.RUNNING
    going_on = Scripted()
    metrics, examples = asyncio.run(
        score_suite(suite, Resumed(going_on, store, second, 3), progress=False)
    )
    prompts = [e.messages[-1]["content"] for e in suite.tasks[0].examples]
    assert going_on.asked == [prompts[6], "a", "b"]  # the seventh, then the choices

    whole = Scripted()
    assert asyncio.run(score_suite(suite, whole, progress=False)) == (metrics, examples)
    assert whole.asked == [*prompts, "a", "b"]

    done = store.succeed(second, metrics, examples)
    assert done.status is RunStatus.SUCCEEDED and store.examples(done) == examples
    assert store.progress(done) == {}


def test_a_worker_whose_run_was_taken_over_cannot_write_its_result(
    database_url: str, tmp_path: Path, suite: Suite
) -> None:
    store = RunStore.open(database_url, tmp_path)
    run = _queued(store, suite)
    stale = store.start(store.acquire(run.id, "worker-a", GONE))
    [fresh] = store.take_over("worker-b", LONG, limit=10)
    assert store.take_over("worker-c", LONG, limit=10) == []  # b holds it

    with pytest.raises(LeaseLost):
        store.renew(stale, LONG)
    assert store.renew(fresh, LONG).lease_until >= fresh.lease_until
    with pytest.raises(LeaseLost):
        store.record(stale, {"0:0": {"text": "stale"}})
    assert store.progress(fresh) == {}
    assert store.start(stale) is None

    mine = [{"task": "add", "id": "add/0", "scores": {"exact_match": 1.0}}]
    theirs = [{"task": "add", "id": "add/0", "scores": {"exact_match": 0.0}}]
    ok = {"add/exact_match": {"value": 1.0, "low": 1.0, "high": 1.0}}
    bad = {"add/exact_match": {"value": 0.0, "low": 0.0, "high": 0.0}}
    assert store.fail(stale, "the gateway stopped").status is RunStatus.RUNNING
    done = store.succeed(fresh, ok, mine)
    late = store.succeed(stale, bad, theirs)
    assert late == done and done.status is RunStatus.SUCCEEDED and done.error is None
    assert (done.metrics, store.examples(done)) == (ok, mine)
    assert [p.name for p in (tmp_path / "evals" / "runs").iterdir()] == [
        Path(done.examples_path).name
    ]  # the stale worker's outputs were not kept
    assert store.fail(stale, "late").status is RunStatus.SUCCEEDED


def test_a_released_run_is_taken_over_at_once_and_its_worker_fenced(
    database_url: str, tmp_path: Path, suite: Suite
) -> None:
    store = RunStore.open(database_url, tmp_path)
    run = _queued(store, suite)
    held = store.acquire(run.id, "worker-a", LONG)
    assert store.take_over("worker-b", LONG, limit=10) == []  # a holds it
    assert store.release(held)  # a clean stop
    with pytest.raises(LeaseLost):
        store.renew(held, LONG)
    [taken] = store.take_over("worker-b", LONG, limit=10)
    assert taken.status is RunStatus.QUEUED and store.start(held) is None
    assert store.start(taken).status is RunStatus.RUNNING


def test_runs_of_the_command_line_are_not_taken_over(
    database_url: str, tmp_path: Path, suite: Suite
) -> None:
    store = RunStore.open(database_url, tmp_path)
    store.create(
        suite=suite.name, suite_digest=suite.digest, model="demo", version="demo:1",
        target="in process", created_by="tests",
    )  # fmt: skip
    assert store.take_over("worker-b", LONG, limit=10) == []


def test_a_run_stopped_with_its_gateway_is_finished_by_the_next_one(
    tmp_path: Path, random_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "suites"
    folder.mkdir()
    (folder / "held.yaml").write_text(HELD)
    monkeypatch.setenv("LLMOPS_EVALS_SUITES_DIR", str(folder))
    home = tmp_path / "home"
    HOLD.clear()  # the first task's metric waits: its answers are scored and kept by then
    try:
        with running_gateway(home, random_model_dir) as first:
            client = openai.OpenAI(base_url=f"{first.base_url}/v1", api_key="x", max_retries=0)
            run = _start(client, "held")
            store = first.gateway.evaluations.runs
            deadline = time.monotonic() + 120
            while len(kept := store.progress(store.get(run.id))) < 3:
                assert time.monotonic() < deadline, "the run never scored its first task"
                time.sleep(0.05)
        stopped = store.get(run.id)
        assert stopped.status is RunStatus.RUNNING and stopped.lease_owner is None
        HOLD.set()  # the first gateway's worker goes on, and is refused
        with running_gateway(home, None) as second:
            client = openai.OpenAI(base_url=f"{second.base_url}/v1", api_key="x", max_retries=0)
            done = _wait(client, "held", run.id, "completed", "failed")
            assert done.status == "completed", done.error
            worker = second.gateway.evaluations.background.worker
    finally:
        HOLD.set()
    finished = store.get(run.id)
    assert finished.lease_owner == worker and finished.lease_epoch == stopped.lease_epoch + 1
    first_task = [e for e in store.examples(finished) if e["task"] == "first"]
    # the answers kept before the stop, not new ones (each answer has its own latency)
    assert [(e["prediction"], e["latency_s"]) for e in first_task] == [
        (kept[f"0:{i}"]["text"], kept[f"0:{i}"]["latency_s"]) for i in range(3)
    ]
