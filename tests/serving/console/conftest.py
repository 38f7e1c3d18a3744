"""The console's world: a real gateway with keys and a model with a few versions and a
metric gate, and Debian's chromium for the browser tests."""

import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from playwright.sync_api import Browser, sync_playwright

from finetune.demo.skills import SKILLS, generate_splits
from tests.serving.conftest import LIMITS, RunningGateway, make_adapter, running_gateway

CHROMIUM = "/usr/bin/chromium"
# demo:1 is the random model (no metrics); then the exact_match each later version records.
SCORES = (0.6, 0.4, 0.8)
SUITE = """
name: console-skills
tasks:
  - name: upper
    data: {demo: upper, count: 6}
    generation: {max_tokens: 6}
    metrics: [exact_match]
"""


@dataclass
class ConsoleWorld:
    gateway: RunningGateway
    alice: str  # admin secrets
    bob: str
    viewer: str  # a key without admin scope

    @property
    def url(self) -> str:
        return self.gateway.base_url + "/ui"


def _variant(model_dir: Path, out: Path, number: int) -> Path:
    """The model's files with a note of its own, so that each version has its own digest."""
    shutil.copytree(model_dir, out)
    (out / "NOTES.txt").write_text(f"variant {number}\n")
    return out


@pytest.fixture(scope="module")
def console_world(
    tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path
) -> Iterator[ConsoleWorld]:
    """demo:1 (random), demo:2 in production (exact_match 0.6), demo:3 worse (0.4) and
    demo:4 better (0.8, a LoRA adapter on demo:3, so that its outputs differ, tagged with
    demo:2 as its teacher), all gated by
    `metric:exact_match` as the CLI would be; demo:2 and demo:4 ran a small suite."""
    home = tmp_path_factory.mktemp("console-home")
    suites = home / "suites"
    suites.mkdir()
    (suites / "console-skills.yaml").write_text(SUITE)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLMOPS_PROMOTION_GATE", "metric:exact_match")
        env.setenv("LLMOPS_EVALS_SUITES_DIR", str(suites))
        with running_gateway(home, random_model_dir, limits=LIMITS) as gw:
            registry = gw.registry
            for number, score in enumerate(SCORES, start=2):
                adapter = number == 4
                files = (
                    make_adapter(random_model_dir, home / "adapter", seed=number)
                    if adapter
                    else _variant(random_model_dir, home / f"variant-{number}", number)
                )
                registry.register(
                    "demo",
                    files,
                    kind="adapter" if adapter else "merged",
                    format="peft-lora" if adapter else "hf-safetensors",
                    parent=f"demo:{number - 1}",
                    metrics={"exact_match": score, "latency_ms": 10.0 + number},
                    tags={"skill": "upper" if number % 2 else "add"}
                    | ({"teacher": "demo:2"} if adapter else {}),
                    recipe_digest=f"sha256:{number:064x}",
                )
            registry.set_alias("demo", "production", 2)
            evaluations = gw.gateway.evaluations.evaluations
            suite = evaluations.suite("console-skills")
            with ThreadPoolExecutor(1) as pool:  # off the browser fixtures' event loop
                for ref in ("demo:2", "demo:4"):
                    pool.submit(evaluations.run, suite, ref, progress=False).result()
            keys = gw.gateway.keys
            yield ConsoleWorld(
                gw,
                keys.create("ops-alice", admin=True)[1],
                keys.create("ops-bob", admin=True)[1],
                keys.create("viewer")[1],
            )


def openai_client(world: ConsoleWorld, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=world.gateway.base_url + "/v1", api_key=secret, max_retries=0)


def submit_job(world: ConsoleWorld, secret: str, folder: Path) -> str:
    """A one-epoch LoRA job on demo:2 over 32 upper-casing rows, one a step (so that the
    loss is logged a few times); its id."""
    rows = generate_splits(SKILLS["upper"], seed=0, num_train=32, num_eval=0)[0]
    data = folder / "upper.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    client = openai_client(world, secret)
    with data.open("rb") as file:
        training = client.files.create(file=file, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="demo:2",
        training_file=training.id,
        hyperparameters={"n_epochs": 1, "batch_size": 1},
        suffix="upper",
    )
    return job.id


@pytest.fixture(scope="module")
def browser(browser_type_launch_args: dict[str, Any]) -> Iterator[Browser]:
    """Debian's chromium, never a browser build Playwright would download; started and
    stopped with this module. Playwright's sync API keeps an event loop running in the main
    thread while it is started, and pytest-playwright's own `browser` lives for the whole
    session, so every later test's `asyncio.run` would fail."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("LLMOPS_REQUIRE_SERVICES"):
            raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (see .ci/run)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            **{**browser_type_launch_args, "executable_path": CHROMIUM}
        )
        yield launched
        launched.close()
