"""A lived-in gateway. Each feature has its own tests; this one puts them all in one home
(LLMOPS_HOME), as a deployment that has been used for a while has them: a cycle of the
continuous-training loop, a recipe job, an API job and a cancelled one, distillation, pruning,
an AutoML trial, a federated run, a merge, an ONNX export followed by an edge device, eval
runs, a batch, stored Responses, feedback, an explanation, an archived version, a pending
promotion request and a revoked key. Then every GET route the OpenAPI document lists (lists
page by page, one item a page; each path filled with every id the home holds) is read as an
admin key, a plain key and a device key, and every console page as the first two (device keys
do not log in): each answers 200, or 403/404 where that key may not see it, never anything
else.

The routes come from /openapi.json and the console's from the application, so a new route is
read here without a change; one whose path names a parameter this test has no ids for fails."""

import contextlib
import io
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai
import optuna
import pytest
import yaml
from fastapi.routing import APIRoute

from core.settings import StackSettings
from evals.continuous.events import Step
from evals.continuous.loop import ContinuousLoop
from evals.continuous.policy import load_policy
from finetune.automl.storage import study_storage
from finetune.cli import main as finetune_main
from finetune.demo.build import DemoBuild, register_demo_model
from finetune.demo.skills import SKILLS, write_skill_splits
from finetune.files import FileStore
from finetune.jobs import JobStatus
from finetune.kinds import DISTILL, FEDERATED, FINE_TUNE, PRUNE, TUNE_TRIAL
from registry.service import open_registry
from serving.app import create_app
from tests.finetune.automl.conftest import search_data
from tests.finetune.conftest import wait_for_job
from tests.finetune.federated.conftest import tiny_config
from tests.serving.conftest import RunningGateway, running_gateway

pytestmark = pytest.mark.slow

SUITE = """
name: lived-in
tasks:
  - name: add
    data: {demo: add, count: 4}
    generation: {max_tokens: 4}
    metrics: [exact_match]
"""
BATCHES = {"poll_s": 0.1, "lease_s": 5.0, "max_in_flight": 4, "retry_for_s": 1.0}
KEYS = ("admin", "plain", "device")
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
# Stored responses are their key's alone, admins' included (serving/responses/store.py).
KEY_PRIVATE = {"/v1/responses/{response_id}"}
# Compare pages need two versions to compare.
CONSOLE_QUERIES = {"/ui/models/{name}/compare": {"v": ["1", "2"], "diff": "true"}}


@dataclass
class World:
    gw: RunningGateway
    home: Path
    secrets: dict[str, str]  # admin, plain, device
    refs: dict[str, str] = field(default_factory=dict)  # versions the command line made
    plain: set[str] = field(default_factory=set)  # ids of what the plain key made
    responses: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    bundle: str = ""  # what the edge device follows

    def client(self, who: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.gw.base_url}/v1", api_key=self.secrets[who], max_retries=0
        )

    def http(self, who: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.secrets[who]}"}
        return httpx.Client(base_url=self.gw.base_url, headers=headers, timeout=120)


def _run_cli(*argv: str) -> tuple[int, str]:
    """`llm-finetune --json ARGV` in this process (on LLMOPS_HOME): its exit code and output."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            code = finetune_main(["--json", *argv])
        except SystemExit as exited:
            code = exited.code
    return code, out.getvalue()


def _cli(*argv: str) -> dict[str, Any]:
    """`llm-finetune --json ARGV`, which must succeed; its JSON answer."""
    code, out = _run_cli(*argv)
    assert code == 0, f"llm-finetune {' '.join(argv)} exited {code}: {out}"
    return json.loads(out)


def _yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _loop_cycle(world: World, folder: Path, suite: Path) -> str:
    """One cycle of the loop as scripts/continuous_demo.py runs it, shortened: known traffic,
    then a phrasing the model lacks with corrections, then a step from drift through a
    fine-tuning job to the gate. Its job id."""
    admin = world.client("admin")  # an admin's corrections may teach

    def ask(messages: list[dict], answer: str, request_id: str, correct: bool) -> None:
        reply = admin.chat.completions.create(
            model="demo", messages=messages, max_tokens=6, temperature=0,
            extra_headers={"x-request-id": request_id},
        )  # fmt: skip
        if correct and reply.choices[0].message.content.strip() != answer:
            given = world.http("admin").post(
                "/v1/feedback", json={"request_id": request_id, "correction": answer}
            )
            assert given.status_code == 200, given.text

    add = SKILLS["add"]
    for n in range(20):
        value = (n, 2 * n + 1)
        ask([{"role": "user", "content": add.prompt(value)}], add.answer(value), f"k-{n}", False)
    for n in range(24):
        a, b = n, 3 * n + 2
        shifted = [{"role": "user", "content": f"Please work out {a} plus {b}, thanks."}]
        ask(shifted, str(a + b), f"s-{n}", True)

    recipe = _yaml(
        folder / "loop-recipe.yaml",
        {"sequence_len": 64, "micro_batch_size": 8, "max_steps": 4, "learning_rate": 1e-3},
    )
    policy = {
        "name": "lived-in",
        "model": "demo",
        # prompt lengths alone tell the shift, without loading an embedding model
        "drift": {"window": 20, "min_window": 20, "reference": {"requests": 20},
                  "deciding": ["prompt_tokens"]},
        "evaluate": {"suites": [str(suite)],
                     "labelled": {"min_rows": 10, "holdout": 0.3, "max_tokens": 6}},
        "retrain_below": {"labelled/exact_match": 0.8},
        # a recipe of a few steps: the `auto` rule of configs/continuous/demo.yaml trains for
        # minutes, and its job is stored alike (no API hyperparameters, the recipe's own)
        "train": {"recipe": str(recipe), "replay": [{"demo": "add", "rows": 8}]},
        "gate": {"suites": [str(suite)], "guard": {"*/exact_match": 1.0}},
        "promote": "auto",
    }  # fmt: skip
    loop = ContinuousLoop.open(
        load_policy(_yaml(folder / "policy.yaml", policy)),
        StackSettings(home=world.home, actor="tests"),
        traffic=world.gw.gateway.traffic,
    )
    outcome = loop.step()
    assert outcome.cycle is not None, outcome.summary
    [job] = [e.ref for e in loop.events.history("demo") if e.step is Step.JOB]
    assert loop.runner.get(job).status is JobStatus.SUCCEEDED, outcome.summary
    return job


def _api_work(world: World, skills: Path, suite_name: str) -> tuple[str, str]:
    """What an application does with the plain key: a fine-tuning job (and a cancelled one),
    a batch, stored responses, feedback, an explanation and an eval run. The job's and the
    run's ids, to wait for."""
    plain, http = world.client("plain"), world.http("plain")
    with (skills / "upper" / "train.jsonl").open("rb") as data:
        training = plain.files.create(file=data, purpose="fine-tune")
    job = plain.fine_tuning.jobs.create(
        model="demo:1", training_file=training.id,
        hyperparameters={"n_epochs": 1, "batch_size": 16}, suffix="upper",
    )  # fmt: skip
    cancelled = plain.fine_tuning.jobs.create(model="demo:1", training_file=training.id)
    assert plain.fine_tuning.jobs.cancel(cancelled.id).status == "cancelled"

    lines = [
        {"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "demo", "max_tokens": 4,
                  "messages": [{"role": "user", "content": f"What is {n} + 1?"}]}}
        for n in range(4)
    ]  # fmt: skip
    batch_file = plain.files.create(
        file=("requests.jsonl", io.BytesIO("".join(json.dumps(x) + "\n" for x in lines).encode())),
        purpose="batch",
    )
    batch = plain.batches.create(
        input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    world.batches.append(batch.id)

    first = plain.responses.create(model="demo", input="What is 12 + 30?", max_output_tokens=6)
    second = plain.responses.create(
        model="demo", input="And 1 + 1?", previous_response_id=first.id, max_output_tokens=6
    )
    world.responses += [first.id, second.id]

    raw = plain.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "Upper-case: lived"}], max_tokens=6
    )
    rated = http.post("/v1/feedback", json={"request_id": raw.headers["x-request-id"], "rating": 4})
    assert rated.status_code == 200, rated.text
    explained = http.post(
        "/v1/explanations",
        json={"model": "demo", "messages": [{"role": "user", "content": "What is 2 + 3?"}],
              "method": "feature_ablation", "max_tokens": 3},
    )  # fmt: skip
    assert explained.status_code == 200, explained.text

    run = plain.evals.runs.create(suite_name, data_source={"type": "completions", "model": "demo"})
    world.plain |= {training.id, job.id, cancelled.id, batch_file.id, batch.id, run.id}
    world.plain |= {first.id, second.id}
    return job.id, run.id


def _operator_work(world: World, folder: Path, skills: Path) -> None:
    """What researchers and operators do on the command line, each with tiny max_steps."""
    reverse = {"datasets": [{"path": str(skills / "reverse" / "train.jsonl")},
                            {"path": str(skills / "reverse" / "eval.jsonl"),
                             "split": "validation"}],
               "sequence_len": 64, "micro_batch_size": 8, "learning_rate": 1e-3}  # fmt: skip
    recipe = _yaml(
        folder / "rev.yaml",
        {"base_model": "demo:1", "max_steps": 2, "save_steps": 1, "eval_steps": 1,
         "suffix": "rev", **reverse},
    )  # fmt: skip
    adapter = _cli("run", str(recipe))
    assert adapter["status"] == "succeeded", adapter

    add = [{"path": str(skills / "add" / "train.jsonl")}]
    distill = {
        "method": "distill", "teacher_model": "demo:1", "datasets": add, "sequence_len": 64,
        "student": {"num_layers": 1, "hidden_size": 32, "num_heads": 1, "intermediate_size": 64},
        "micro_batch_size": 8, "max_steps": 2,
    }  # fmt: skip
    distilled = _cli("run", str(_yaml(folder / "distill.yaml", distill)), "--suffix", "small")
    world.refs["distilled"] = distilled["registered_version"]
    prune = {
        "method": "prune", "base_model": "demo:1", "pruning": {"mlp_ratio": 0.5},
        "datasets": add, "sequence_len": 64, "micro_batch_size": 8, "max_steps": 1,
    }  # fmt: skip
    world.refs["pruned"] = _cli("run", str(_yaml(folder / "prune.yaml", prune)))[
        "registered_version"
    ]

    search = search_data(skills, trials=1)
    search["recipe"].update(base_model="demo:1", max_steps=2)
    tuned = _cli("tune", "run", str(_yaml(folder / "search.yaml", search)), "--here")
    assert tuned["registered_version"], tuned

    silos = {}
    for silo, skill in (("a", "reverse"), ("b", "upper")):
        silos[silo] = folder / "silos" / silo
        silos[silo].mkdir(parents=True)
        (silos[silo] / "train.jsonl").write_text((skills / skill / "train.jsonl").read_text())
    federation = tiny_config(silos, base_model="demo:1", rounds=1)
    # Its record is what counts here, and a federation whose processes die (as they do on a
    # loaded machine) leaves a failed job, as deployments have; tests/finetune/federated/
    # check that one succeeds.
    code, _ = _run_cli("federated", "run", str(_yaml(folder / "federation.yaml", federation)))
    assert code in (0, 1), code

    merged = _cli("merge", adapter["registered_version"])
    exported = _cli("export", merged["ref"], "--precision", "int8")
    world.gw.registry.set_alias(exported["name"], "edge", exported["version"])
    world.bundle = f"{exported['name']}@edge"


def _admin_work(world: World) -> None:
    """An edge device that fetched its bundle and reported; an archived version, a pending
    promotion request and a revoked key."""
    admin = world.http("admin")
    added = admin.post("/v1/edge/devices", json={"id": "kiosk-1", "model": world.bundle})
    assert added.status_code == 201, added.text
    world.secrets["device"] = added.json()["key"]
    device = world.http("device")
    assert device.get(f"/v1/edge/bundles/{world.bundle}").status_code == 200
    report = {"device_id": "kiosk-1", "model": world.bundle, "status": "installed"}
    assert device.post("/v1/edge/reports", json=report).status_code == 200

    pruned, distilled = world.refs["pruned"], world.refs["distilled"].split(":")
    archived = admin.post(f"/v1/registry/versions/{pruned}/archive", json={"reason": "old"})
    assert archived.status_code == 200, archived.text
    asked = admin.post(
        f"/v1/registry/models/{distilled[0]}/aliases/production/requests",
        json={"version": int(distilled[1]), "reason": "smaller"},
    )
    assert asked.status_code == 201, asked.text
    key, _ = world.gw.gateway.keys.create("retired")
    assert admin.delete(f"/v1/keys/{key.id}").status_code == 200


def _wait(read, done, what: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while not done(found := read()):
        assert time.monotonic() < deadline, f"{what} never finished: {found}"
        time.sleep(0.5)
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, demo_build: DemoBuild) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("lived-in")
    home, suites, skills = folder / "home", folder / "suites", folder / "skills"
    suites.mkdir()
    suite = suites / "lived-in.yaml"
    suite.write_text(SUITE)
    write_skill_splits(skills, seed=0, num_train=32, num_eval=8)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLMOPS_HOME", str(home))
        env.delenv("LLMOPS_DATABASE_URL", raising=False)
        env.setenv("LLMOPS_EVALS_SUITES_DIR", str(suites))
        register_demo_model(open_registry(StackSettings(home=home, actor="tests")), demo_build)
        config = {"drift": {"enabled": False}, "batches": BATCHES, "resolve_ttl_s": 0.0}
        with running_gateway(home, None, **config) as gw:
            keys = gw.gateway.keys
            secrets = {
                "admin": keys.create("ops", admin=True)[1],
                "plain": keys.create("app")[1],
            }
            lived = World(gw, home, secrets)
            loop_job = _loop_cycle(lived, folder, suite)
            api_job, plain_run = _api_work(lived, skills, "lived-in")
            admin_run = lived.client("admin").evals.runs.create(
                "lived-in", data_source={"type": "completions", "model": "demo:1"}
            )
            _operator_work(lived, folder, skills)
            _admin_work(lived)

            plain, admin = lived.client("plain"), lived.client("admin")
            assert wait_for_job(plain, api_job).status == "succeeded"
            for run in (plain_run, admin_run.id):
                finished = _wait(
                    lambda run=run: admin.evals.runs.retrieve(run, eval_id="lived-in"),
                    lambda r: r.status not in ("queued", "in_progress"),
                    f"eval run {run}",
                )
                assert finished.status == "completed", finished
            for batch in lived.batches:
                done = _wait(
                    lambda batch=batch: plain.batches.retrieve(batch),
                    lambda b: b.status in ("completed", "failed", "expired", "cancelled"),
                    f"batch {batch}",
                )
                assert done.status == "completed", done
                lived.plain |= {done.output_file_id} - {None}
            kinds = {j.kind for j in gw.gateway.jobs.store.list_jobs()}
            assert kinds == {FINE_TUNE, DISTILL, PRUNE, TUNE_TRIAL, FEDERATED}, kinds
            assert loop_job in {j.id for j in gw.gateway.jobs.store.list_jobs()}
            yield lived


# -- reading everything ----------------------------------------------------------------------


def _bindings(world: World) -> list[dict[str, str]]:
    """Every id the home holds, as values of the path parameters that name it; ids read
    together (a run and its eval) in one mapping."""
    gateway, registry = world.gw.gateway, world.gw.registry
    admin = world.http("admin")
    found: list[dict[str, str]] = [{"name": m.name} for m in registry.list_models()]
    for version in registry.list_versions(include_archived=True):
        files = registry.artifacts.load_manifest(version.artifact_digest).files
        found.append(
            {"ref": version.ref, "name": version.name, "number": str(version.version),
             "path": files[0].path}
        )  # fmt: skip
        if version.format.value == "onnx":
            found.append({"version": version.ref, "sha256": files[0].sha256})
    found += [{"job_id": job.id} for job in gateway.jobs.store.list_jobs()]
    found += [{"file_id": f.id} for f in FileStore(gateway.jobs.store.engine).list()]
    studies = optuna.get_all_study_names(study_storage(gateway.jobs.stack))
    found += [{"study": name} for name in studies]
    evals = {entry.id for entry in world.client("admin").evals.list()}
    found += [{"eval_id": name} for name in evals]
    for run in gateway.evaluations.runs.list_runs(limit=1000):
        found.append({"run_id": run.id})
        # The Evals API knows the suites folder only; the loop's suite of corrections (a file
        # of its cycle, always named `labelled`) is seen in the console only.
        if run.suite not in evals:
            continue
        items = admin.get(f"/v1/evals/{run.suite}/runs/{run.id}/output_items", params={"limit": 1})
        first = items.json()["data"][:1] if items.status_code == 200 else []
        found.append(
            {"eval_id": run.suite, "run_id": run.id}
            | ({"output_item_id": first[0]["id"]} if first else {})
        )
    found += [{"batch_id": b} for b in world.batches]
    found += [{"response_id": r} for r in world.responses]
    found.append({"model": world.bundle})
    return found


def _fill(template: str, bindings: list[dict[str, str]]) -> list[tuple[str, frozenset]]:
    """The template's paths for every binding naming all its parameters, with the ids used."""
    names = re.findall(r"{(\w+)(?::path)?}", template)
    paths = {}
    for binding in bindings:
        if all(n in binding for n in names):
            path = template
            for n in names:
                value = quote(binding[n], safe="/" if n == "path" else "")
                path = re.sub(rf"{{{n}(:path)?}}", lambda _m, v=value: v, path)
            paths[path] = frozenset(binding[n] for n in names)
    return list(paths.items())


def _pages(client: httpx.Client, path: str, pageable: bool) -> list[httpx.Response]:
    """The answer to GET path; for a list that pages, its pages of one item (the first 30)."""
    if not pageable:
        return [client.get(path)]
    answers: list[httpx.Response] = []
    params: dict[str, Any] = {"limit": 1}
    while len(answers) < 30:
        answers.append(reply := client.get(path, params=params))
        if reply.status_code != 200 or not reply.json().get("has_more"):
            break
        params = {**params, "after": reply.json()["last_id"]}
    return answers


def _judge(
    results: dict[str, list[tuple[str, int, str]]], route: str, mine: bool, strict_plain: bool
) -> list[str]:
    """What broke among one path's answers to each key: anything but 200/403/404; an admin
    refused where a device key is answered (device routes) is right, and so is not finding
    another key's private resource, otherwise admins see all; the plain key sees what it
    made."""
    broken = []
    device_route = any(s == 200 for _, s, _ in results["device"])
    for who, answers in results.items():
        for url, status, body in answers:
            wrong = status not in (200, 403, 404)
            if who == "admin":
                excused = (status == 403 and device_route) or (
                    status == 404 and route in KEY_PRIVATE
                )
                wrong |= status != 200 and not excused
            if who == "plain" and mine:
                wrong |= status != 200 if strict_plain else status == 404
            if wrong:
                broken.append(f"{route} {url} as {who}: {status} {body[:300]}")
    return broken


def test_every_get_route_of_the_openapi_document_answers_every_key(world: World) -> None:
    document = world.http("admin").get("/openapi.json")
    assert document.status_code == 200
    bindings = _bindings(world)
    clients = {who: world.http(who) for who in KEYS}
    broken, read = [], set()
    for template, operations in sorted(document.json()["paths"].items()):
        if "get" not in operations:
            continue
        query = {p["name"] for p in operations["get"].get("parameters", []) if p["in"] == "query"}
        paths = _fill(template, bindings)
        if not paths:
            broken.append(f"{template}: no ids for its path parameters; add them to _bindings")
        for path, ids in paths:
            results = {
                who: [
                    (str(r.url.copy_with(scheme=None, netloc=None)), r.status_code, r.text)
                    for r in _pages(client, path, {"limit", "after"} <= query)
                ]
                for who, client in clients.items()
            }
            read.add(path)
            broken += _judge(results, template, bool(ids & world.plain), strict_plain=True)
    jobs = {f"/v1/fine_tuning/jobs/{job.id}" for job in world.gw.gateway.jobs.store.list_jobs()}
    assert jobs | {"/v1/fine_tuning/jobs", "/v1/evals", "/v1/batches"} <= read
    assert not broken, "\n".join(broken)


def _console(world: World, who: str) -> httpx.Client:
    """A console session of `who`, logged in through the login form."""
    client = httpx.Client(base_url=world.gw.base_url, follow_redirects=False, timeout=120)
    token = TOKEN.search(client.get("/ui/login").text).group(1)
    done = client.post("/ui/login", data={"api_key": world.secrets[who], "csrf_token": token})
    assert done.status_code == 303, done.text
    return client


def test_every_console_page_answers_every_key(world: World) -> None:
    pages = sorted(
        route.path
        for route in create_app(world.gw.gateway).routes
        if isinstance(route, APIRoute) and "GET" in route.methods and route.path != "/ui/login"
        and route.path.startswith("/ui/")
    )  # fmt: skip
    bindings = _bindings(world)
    versions = Counter(v.name for v in world.gw.registry.list_versions(include_archived=True))
    comparable = {name for name, count in versions.items() if count >= 2}
    sessions = {who: _console(world, who) for who in ("admin", "plain")}
    broken, read = [], set()
    for template in pages:
        paths = _fill(template, bindings)
        if not paths:
            broken.append(f"{template}: no ids for its path parameters; add them to _bindings")
        for path, ids in paths:
            if template in CONSOLE_QUERIES and not ids & comparable:
                continue
            params = CONSOLE_QUERIES.get(template, {})
            results: dict[str, list[tuple[str, int, str]]] = {"device": []}
            for who, session in sessions.items():
                reply = session.get(path, params=params)
                results[who] = [(str(reply.url.copy_with(scheme=None, netloc=None)),
                                 reply.status_code, reply.text)]  # fmt: skip
            read.add(path)
            broken += _judge(results, template, bool(ids & world.plain), strict_plain=False)
    jobs = {f"/ui/jobs/{job.id}" for job in world.gw.gateway.jobs.store.list_jobs()}
    console = {"/ui/", "/ui/jobs", "/ui/models/demo", "/ui/models/demo/compare", "/ui/automl/tiny"}
    assert jobs | console <= read
    assert not broken, "\n".join(broken)
