"""The Evals API on a running gateway with keys, through the `openai` SDK, on a tiny untrained
model: suites listed as evals, runs that go on in the background (listed while they run,
cancelled, bounded), their output items, ownership, refused models and bodies, and runs left
by a process that died."""

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from core.settings import StackSettings
from evals.cli import main as evals_main
from evals.runs import RunStatus, RunStore
from evals.service import Evaluations
from evals.tables import runs as runs_table
from finetune.runner import process_start
from tests.serving.conftest import LIMITS, RunningGateway, running_gateway

# A metric that holds the run until the test lets it go, so that a run is seen while it runs.
HOLD = threading.Event()
HOLD.set()


def held_metric(prediction: str, reference: str) -> float:
    assert HOLD.wait(timeout=120), "the test never let the run go"
    return 1.0


TINY = """
name: tiny
description: A few held-out examples of two demo skills.
tasks:
  - name: add
    data: {demo: add, count: 6}
    generation: {max_tokens: 4}
    metrics: [exact_match, latency_s]
  - name: colours
    data: {path: colours.jsonl}
    metrics: [choice_accuracy]
"""
HELD = """
name: held
tasks:
  - name: first
    data: {demo: upper, count: 3}
    generation: {max_tokens: 3}
    metrics: ["tests.evals.test_evals_api:held_metric"]
  - name: second
    data: {demo: add, count: 3}
    generation: {max_tokens: 3}
    metrics: [normalized_match]
"""
CHOICES = [
    {"messages": [{"role": "user", "content": "What colour is the zorblax?"}],
     "choices": ["blue", "red"], "answer": 1},
    {"messages": [{"role": "user", "content": "Which colour is the gubbin?"}],
     "choices": ["black", "white", "gold"], "answer": 0},
]  # fmt: skip
TINY_EXAMPLES = 6 + len(CHOICES)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evals-api-home")


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path, home: Path
) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("suites")
    (folder / "tiny.yaml").write_text(TINY)
    (folder / "held.yaml").write_text(HELD)
    (folder / "colours.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CHOICES))
    (folder / "notes.yaml").write_text("models: {demo: {}}\n")  # not a suite
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLMOPS_EVALS_SUITES_DIR", str(folder))
        env.setenv("LLMOPS_EVALS_MAX_RUNNING_RUNS", "1")
        env.setenv("LLMOPS_EVALS_MAX_QUEUED_RUNS", "1")
        with running_gateway(home, random_model_dir, limits=LIMITS) as running:
            yield running


@pytest.fixture(scope="module")
def keys(gw: RunningGateway) -> dict[str, str]:
    store = gw.gateway.keys
    secrets = {name: store.create(name)[1] for name in ("alice", "bob")}
    secrets["admin"] = store.create("ops", admin=True)[1]
    secrets["narrow"] = store.create("narrow", models=("other",))[1]
    return secrets


def _client(gw: RunningGateway, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=secret, max_retries=0)


def _start(client: openai.OpenAI, eval_id: str, model: str = "demo", **fields):
    return client.evals.runs.create(
        eval_id, data_source={"type": "completions", "model": model}, **fields
    )


def _wait(client: openai.OpenAI, eval_id: str, run_id: str, *statuses: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in statuses:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status}"
        time.sleep(0.05)


def _cli(argv: list[str], capsys) -> object:
    with pytest.raises(SystemExit) as code:
        evals_main(["--json", *argv])
    out = capsys.readouterr().out
    assert code.value.code == 0, out
    return json.loads(out)


@pytest.fixture(autouse=True)
def _let_runs_go() -> Iterator[None]:
    yield
    HOLD.set()


def test_suites_are_listed_as_evals(gw: RunningGateway, keys: dict[str, str]) -> None:
    client = _client(gw, keys["bob"])
    listed = list(client.evals.list())
    assert sorted(e.id for e in listed) == ["held", "tiny"]  # notes.yaml is no suite
    tiny = client.evals.retrieve("tiny")
    assert (tiny.object, tiny.name, tiny.data_source_config.type) == ("eval", "tiny", "custom")
    criteria = [(c.name, c.type) for c in tiny.testing_criteria]
    assert criteria == [
        ("add/exact_match", "string_check"),
        ("add/latency_s", "metric"),
        ("colours/choice_accuracy", "metric"),
    ]
    headers = {"Authorization": f"Bearer {keys['bob']}"}
    raw = httpx.get(f"{gw.base_url}/v1/evals/tiny", headers=headers).json()
    assert [t["examples"] for t in raw["tasks"]] == [6, 2]
    assert raw["digest"].startswith("sha256:")
    assert [c.get("pass_threshold") for c in raw["testing_criteria"]] == [None, None, 1.0]
    assert raw["testing_criteria"][0]["operation"] == "eq"
    assert raw["data_source_config"]["schema"]["required"] == ["item", "sample"]

    with pytest.raises(openai.NotFoundError) as err:
        client.evals.retrieve("no-such-suite")
    assert err.value.code == "eval_not_found"
    assert "GET /v1/evals" in err.value.message and "configs/evals" in err.value.message
    with pytest.raises(openai.NotFoundError) as err:
        client.evals.retrieve("notes")
    assert "not a valid suite" in err.value.message
    for path in ("/v1/evals/..%2Ftiny", "/v1/evals/%2Fetc%2Fpasswd", "/v1/evals/.tiny"):
        reply = httpx.get(gw.base_url + path, headers=headers)
        assert reply.status_code in (400, 404), (path, reply.text)
        assert "error" in reply.json()
    created = httpx.post(f"{gw.base_url}/v1/evals", json={"name": "x"}, headers=headers)
    assert created.status_code == 405 and created.headers["allow"] == "GET"  # suites are files
    assert created.json()["error"]["code"] == "method_not_allowed"
    assert httpx.get(f"{gw.base_url}/v1/evals").status_code == 401


def test_a_run_is_listed_while_it_runs_then_its_outputs_are_read(
    gw: RunningGateway, home: Path, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    client = _client(gw, keys["alice"])
    HOLD.clear()
    started = _start(client, "held", name="nightly", metadata={"team": "ml"})
    assert started.object == "eval.run" and started.status in ("queued", "in_progress")
    assert (started.eval_id, started.name, started.model) == ("held", "nightly", "demo")
    assert started.data_source.model == "demo" and started.metadata == {"team": "ml"}

    running = _wait(client, "held", started.id, "in_progress")
    listed = client.evals.runs.list("held")
    assert [(r.id, r.status) for r in listed.data] == [(started.id, "in_progress")]
    assert 0 <= running.model_extra["progress"] < 1
    assert running.model_extra["version"] == "demo:1"
    # the command line reads the same store
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    cli_runs = _cli(["list"], capsys)
    assert (started.id, "running") in [(r["id"], r["status"]) for r in cli_runs]

    HOLD.set()
    done = _wait(client, "held", started.id, "completed", "failed")
    assert done.status == "completed", done.error
    assert done.result_counts.total == 6 and done.result_counts.errored == 0
    assert done.result_counts.passed + done.result_counts.failed == 6
    assert [c.testing_criteria for c in done.per_testing_criteria_results] == [
        "second/normalized_match"
    ]
    assert done.per_model_usage[0].model_name == "demo:1"
    assert done.per_model_usage[0].invocation_count == 6
    metrics = done.model_extra["metrics"]
    assert metrics["first/tests.evals.test_evals_api:held_metric"]["value"] == 1.0
    assert set(metrics["second/normalized_match"]) == {"value", "low", "high"}
    assert done.model_extra["progress"] == 1.0

    items = client.evals.runs.output_items.list(started.id, eval_id="held", limit=4)
    assert len(items.data) == 4 and items.has_more
    every = list(client.evals.runs.output_items.list(started.id, eval_id="held", limit=4))
    assert [i.datasource_item_id for i in every] == list(range(6))
    first, last = every[0], every[-1]
    assert first.object == "eval.run.output_item" and first.run_id == started.id
    assert first.status == "pass" and first.results == []  # no grading metric
    assert first.datasource_item["id"] == "first/0" and first.sample.output[0].role == "assistant"
    assert first.sample.input[-1].role == "user" and first.sample.model == "demo:1"
    assert first.sample.max_completion_tokens == 3
    assert last.results[0].name == "second/normalized_match"
    assert last.status == ("pass" if last.results[0].passed else "fail")
    again = client.evals.runs.output_items.retrieve(last.id, eval_id="held", run_id=started.id)
    assert again.datasource_item == last.datasource_item
    failed = client.evals.runs.output_items.list(started.id, eval_id="held", status="fail")
    assert len(failed.data) == done.result_counts.failed

    shown = _cli(["show", started.id], capsys)
    assert shown["status"] == "succeeded" and shown["owner"] is not None
    assert shown["name"] == "nightly"


def test_runs_belong_to_the_key_that_started_them(gw: RunningGateway, keys: dict[str, str]) -> None:
    alice, bob, admin = (_client(gw, keys[k]) for k in ("alice", "bob", "admin"))
    mine = _start(alice, "tiny")
    done = _wait(alice, "tiny", mine.id, "completed", "failed")
    assert done.status == "completed", done.error
    assert done.result_counts.total == TINY_EXAMPLES
    choice_item = list(alice.evals.runs.output_items.list(mine.id, eval_id="tiny"))[-1]
    assert choice_item.datasource_item["choices"] == ["black", "white", "gold"]

    for call in (
        lambda: bob.evals.runs.retrieve(mine.id, eval_id="tiny"),
        lambda: bob.evals.runs.cancel(mine.id, eval_id="tiny"),
        lambda: bob.evals.runs.output_items.list(mine.id, eval_id="tiny"),
        lambda: alice.evals.runs.retrieve(mine.id, eval_id="held"),  # not a run of that eval
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.code == "eval_run_not_found", err.value.message
    assert mine.id not in {r.id for r in bob.evals.runs.list("tiny")}
    assert mine.id in {r.id for r in admin.evals.runs.list("tiny")}
    assert admin.evals.runs.retrieve(mine.id, eval_id="tiny").status == "completed"


def test_a_run_of_a_suite_the_catalog_does_not_list_is_read_by_its_suite_name(
    gw: RunningGateway, keys: dict[str, str], tmp_path: Path
) -> None:
    """The continuous loop scores suites kept outside the gateway's folder, owned by no key:
    admins read them under the suite's name; other keys, and other eval ids, find nothing."""
    path = tmp_path / "loop.yaml"
    path.write_text(
        "name: loop-held\ntasks:\n  - name: add\n    data: {demo: add, count: 2}\n"
        "    generation: {max_tokens: 2}\n    metrics: [exact_match]\n"
    )
    evaluations = gw.gateway.evaluations.evaluations
    run = evaluations.run(evaluations.suite(str(path)), "demo", progress=False)
    assert run.owner is None and run.status is RunStatus.SUCCEEDED

    admin, alice = _client(gw, keys["admin"]), _client(gw, keys["alice"])
    seen = admin.evals.runs.retrieve(run.id, eval_id="loop-held")
    assert (seen.id, seen.eval_id, seen.status) == (run.id, "loop-held", "completed")
    assert seen.result_counts.total == 2
    items = list(admin.evals.runs.output_items.list(run.id, eval_id="loop-held"))
    assert [(i.eval_id, i.datasource_item["task"]) for i in items] == [("loop-held", "add")] * 2
    for call in (
        lambda: alice.evals.runs.retrieve(run.id, eval_id="loop-held"),
        lambda: alice.evals.runs.output_items.list(run.id, eval_id="loop-held"),
        lambda: admin.evals.runs.retrieve(run.id, eval_id="tiny"),  # another eval's id
        lambda: admin.evals.runs.retrieve("evalrun-" + "0" * 24, eval_id="loop-held"),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.code == "eval_run_not_found", err.value.message


def test_models_a_key_may_not_use_are_refused(
    gw: RunningGateway, keys: dict[str, str], random_model_dir: Path
) -> None:
    alice_id = gw.gateway.keys.authenticate(keys["alice"]).id
    gw.registry.register("private", random_model_dir, owner=alice_id)
    with pytest.raises(openai.PermissionDeniedError) as err:
        _start(_client(gw, keys["narrow"]), "tiny")
    assert err.value.code == "model_not_allowed" and "demo" in err.value.message
    for model in ("nope", "private:1"):
        with pytest.raises(openai.NotFoundError) as err:
            _start(_client(gw, keys["bob"]), "tiny", model=model)
        assert err.value.code == "model_not_found", err.value.message
    with pytest.raises(openai.NotFoundError) as err:
        _start(_client(gw, keys["bob"]), "no-such-suite")
    assert err.value.code == "eval_not_found"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "data_source"),
        ({"data_source": {"type": "jsonl", "model": "demo"}}, "data_source"),
        ({"data_source": {"type": "completions"}}, "data_source.model"),
        ({"data_source": {"type": "completions", "model": "a b"}}, "data_source.model"),
        (
            {"data_source": {"type": "completions", "model": "demo", "source": {}}},
            "`source` is not supported",
        ),
        (
            {"data_source": {"type": "completions", "model": "demo"}, "name": ""},
            "name",
        ),
        (
            {
                "data_source": {"type": "completions", "model": "demo"},
                "metadata": {f"k{i}": "v" for i in range(17)},
            },
            "metadata",
        ),
    ],
)
def test_bad_run_bodies_are_refused(
    gw: RunningGateway, keys: dict[str, str], body: dict, says: str
) -> None:
    reply = httpx.post(
        f"{gw.base_url}/v1/evals/tiny/runs",
        json=body,
        headers={"Authorization": f"Bearer {keys['bob']}"},
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and says in error["message"], error


def test_runs_are_cancelled_and_bounded(gw: RunningGateway, keys: dict[str, str]) -> None:
    client = _client(gw, keys["bob"])
    HOLD.clear()
    first = _start(client, "held")
    _wait(client, "held", first.id, "in_progress")
    second = _start(client, "tiny")  # waits for the one worker
    assert client.evals.runs.retrieve(second.id, eval_id="tiny").status == "queued"
    with pytest.raises(openai.RateLimitError) as err:  # one running, one queued: full
        _start(client, "tiny")
    assert err.value.code == "too_many_eval_runs"
    assert err.value.response.headers["retry-after"]

    # The queued run first: once the running one is cancelled, the worker is free for it.
    queued = httpx.post(  # OpenAI's documented cancel: POST on the run
        f"{gw.base_url}/v1/evals/tiny/runs/{second.id}",
        headers={"Authorization": f"Bearer {keys['bob']}"},
    )
    assert queued.status_code == 200 and queued.json()["status"] == "canceled"
    cancelled = client.evals.runs.cancel(first.id, eval_id="held")
    assert cancelled.status == "canceled"
    HOLD.set()
    deadline = time.monotonic() + 60
    while gw.gateway.evaluations.background.active:  # the workers notice and stop
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.evals.runs.retrieve(first.id, eval_id="held").status == "canceled"
    assert client.evals.runs.retrieve(second.id, eval_id="tiny").status == "canceled"
    assert client.evals.runs.output_items.list(first.id, eval_id="held").data == []
    with pytest.raises(openai.BadRequestError) as err:
        client.evals.runs.cancel(first.id, eval_id="held")
    assert "already canceled" in err.value.message
    statuses = {r.id: r.status for r in client.evals.runs.list("held", status="canceled")}
    assert statuses[first.id] == "canceled"


def test_runs_left_by_a_dead_process_fail_when_a_gateway_starts(
    tmp_path: Path, random_model_dir: Path
) -> None:
    home = tmp_path / "home"
    stack = StackSettings(home=home)
    runs = Evaluations.open(stack).runs
    orphan = runs.create(
        suite="tiny", suite_digest="sha256:" + "0" * 64, model="demo", version="demo:1",
        target="in process", created_by="tests",
    )  # fmt: skip
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = process_start(gone.pid)
    gone.kill()
    gone.wait()
    alive = runs.create(
        suite="tiny",
        suite_digest="sha256:" + "0" * 64,
        model="demo",
        version="demo:1",
        target="in process",
        created_by="tests",
    )  # fmt: skip (this process: alive)
    with runs.engine.begin() as conn:
        conn.execute(
            runs_table.update()
            .where(runs_table.c.id == orphan.id)
            .values(worker=f"{socket.gethostname()}:{gone.pid}:{started}")
        )
    with running_gateway(home, random_model_dir):
        pass
    failed = RunStore.open(stack.resolved_database_url, home).get(orphan.id)
    assert failed.status is RunStatus.FAILED
    assert f"pid {gone.pid}" in failed.error and "start the run again" in failed.error
    assert runs.get(alive.id).status is RunStatus.RUNNING


def test_the_run_store_keeps_cancelled_runs_cancelled(database_url: str, tmp_path: Path) -> None:
    """On SQLite and PostgreSQL: pages by owner, suite and status in both orders, and a run
    cancelled while its worker scores it is not marked succeeded (its outputs are dropped)."""
    store = RunStore.open(database_url, tmp_path)
    fields = {"suite_digest": "sha256:" + "0" * 64, "model": "demo", "version": "demo:1",
              "target": "in process", "created_by": "tests"}  # fmt: skip
    made = [
        store.create(suite="a", owner="k1", status=RunStatus.QUEUED, **fields),
        store.create(suite="a", owner="k2", **fields),
        store.create(suite="a", owner="k1", **fields),
        store.create(suite="b", owner=None, **fields),
    ]
    mine = store.list_runs(10, suite="a", owner="k1", ascending=True)
    assert [r.id for r in mine] == [made[0].id, made[2].id]
    assert [r.id for r in store.list_runs(10, suite="a", after=made[2])] == [
        made[1].id,
        made[0].id,
    ]
    assert [r.id for r in store.list_runs(1, suite="a", ascending=True, after=made[0])] == [
        made[1].id
    ]
    assert [r.id for r in store.list_runs(10, owner=None)] == [made[3].id]
    queued = store.list_runs(10, statuses=(RunStatus.QUEUED,))
    assert [r.id for r in queued] == [made[0].id]

    assert store.start(made[0]).status is RunStatus.RUNNING and store.start(made[0]) is None
    assert store.cancel(made[0])
    done = store.succeed(made[0], {}, [{"task": "t", "id": "t/0", "scores": {}}])
    assert done.status is RunStatus.CANCELED and done.examples_path is None
    assert not list((tmp_path / "evals" / "runs").glob("*"))
    assert store.fail(made[0], "late").error is None
    assert not store.cancel(made[0])
    finished = store.succeed(made[1], {"t/m": {"value": 1, "low": 1, "high": 1}}, [], {"total": 0})
    assert finished.status is RunStatus.SUCCEEDED and finished.summary == {"total": 0}
    assert not store.cancel(finished)
