"""The continuous-training loop in a shortened form, on the demo model behind a real gateway:
traffic moves to a phrasing the model does not know, users correct its answers through
`/v1/feedback`, and one step of the loop goes from drift through evaluation, a fine-tuning
job and the gate to `production`, after which the gateway answers the new phrasing. The gate
always judges held-out data no feedback wrote, and a policy whose gate would not is refused."""

import json
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from core.errors import StackError
from core.settings import StackSettings
from evals.continuous.dataset import write_labelled_suite
from evals.continuous.events import Step
from evals.continuous.loop import ContinuousLoop
from evals.continuous.policy import load_policy
from finetune.demo.skills import SKILLS
from tests.serving.conftest import make_adapter, running_gateway

KNOWN = ["add", "upper", "lookup"]

POLICY = {
    "name": "shortened",
    "model": "demo",
    "drift": {"window": 60, "min_window": 30, "reference": {"requests": 60}},
    "evaluate": {
        "suites": [],
        "labelled": {"min_rows": 30, "holdout": 0.3, "max_tokens": 6},
    },
    "retrain_below": {"labelled/exact_match": 0.8},
    "train": {"replay": [{"demo": skill, "rows": 40} for skill in KNOWN]},
    "gate": {
        "suites": ["demo-skills"],
        "guard": {"*/exact_match": 0.1},
        "improve": ["labelled/exact_match"],
    },
    "promote": "auto",
}


def _new_phrasing(rng: random.Random) -> tuple[list[dict], str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return [{"role": "user", "content": f"Please work out {a} plus {b}, thanks."}], str(a + b)


def _known(rng: random.Random) -> tuple[list[dict], str]:
    skill = SKILLS[rng.choice(KNOWN)]
    value = skill.sample(rng)
    return [{"role": "user", "content": skill.prompt(value)}], skill.answer(value)


def _write(tmp_path: Path, policy: dict) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def test_a_bad_policy_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="unknown key in train: 'replya'; did you mean 'replay'"):
        load_policy(_write(tmp_path, {**POLICY, "train": {"replya": []}}))
    with pytest.raises(
        StackError, match=re.escape("train.recipe: no such file 'recipes/missing.yaml'")
    ):
        load_policy(_write(tmp_path, {**POLICY, "train": {"recipe": "recipes/missing.yaml"}}))
    env = {**os.environ, "LLMOPS_HOME": str(tmp_path / "home")}
    refused = subprocess.run(
        [sys.executable, "-m", "evals", "loop", "run", str(tmp_path / "policy.yaml")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "no such file" in refused.stderr
    assert not (tmp_path / "home" / "evals" / "loop").exists()


def _suite(folder: Path, name: str, skill: str) -> str:
    path = folder / f"{name}.yaml"
    task = {"name": skill, "data": {"demo": skill, "count": 4},
            "generation": {"max_tokens": 4}, "metrics": ["exact_match"]}  # fmt: skip
    path.write_text(yaml.safe_dump({"name": name, "tasks": [task]}))
    return str(path)


def test_the_gate_always_includes_non_feedback_held_out_data(
    tmp_path: Path, random_model_dir: Path
) -> None:
    stack = StackSettings(home=tmp_path / "home", actor="tests")
    corrected = [{"messages": [{"role": "user", "content": "What is 2 + 2?"},
                               {"role": "assistant", "content": "4"}]}] * 3  # fmt: skip
    (tmp_path / "cycle").mkdir()
    labelled = write_labelled_suite(tmp_path / "cycle", corrected, max_tokens=4)
    policy = {
        **POLICY,
        "evaluate": {"suites": [_suite(tmp_path, "watched", "upper")]},
        "gate": {"suites": [_suite(tmp_path, "guard", "add")], "guard": {"*/exact_match": 1.0}},
    }
    loop = ContinuousLoop.open(load_policy(_write(tmp_path, policy)), stack)
    base = loop.registry.register("demo", random_model_dir)
    loop.registry.set_alias("demo", "production", base.version)
    adapter = make_adapter(random_model_dir, tmp_path / "adapter", seed=1)
    candidate = loop.registry.register("demo", adapter, kind="adapter", parent=base.ref)

    outcome = loop.promote("cycle-test", candidate, labelled)
    assert outcome.summary == "demo@production moved to demo:2", outcome
    [gate] = [e for e in loop.events.history("demo") if e.step is Step.GATE]
    # the policy's gate suite and its held-out suite, besides the corrections
    assert set(gate.detail["gate"]["details"]["runs"]) == {"guard", "watched", "labelled"}

    # a gate that would judge only what feedback wrote is refused before any cycle
    for gate_config in (
        {"suites": [str(labelled)], "guard": {"*/exact_match": 0.1}},
        {"suites": [_suite(tmp_path, "guard", "add")], "improve": ["labelled/exact_match"]},
    ):
        refused = _write(tmp_path, {**POLICY, "gate": gate_config})
        with pytest.raises(StackError, match="the gate would rest on feedback alone"):
            ContinuousLoop.open(load_policy(refused), stack)
    cli = subprocess.run(
        [sys.executable, "-m", "evals", "loop", "run", str(refused)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "LLMOPS_HOME": str(stack.home)},
    )  # fmt: skip
    assert cli.returncode == 2, cli.stderr
    assert "gate would rest on feedback alone" in cli.stderr
    assert "add/exact_match" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_one_step_of_the_loop_goes_from_drift_to_production(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    home = tmp_path / "home"
    with running_gateway(home, demo_model_dir, drift={"enabled": False}) as gw:
        client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="unused", max_retries=0)

        def ask(messages: list[dict], request_id: str) -> str:
            reply = client.chat.completions.create(
                model="demo", messages=messages, max_tokens=6, temperature=0,
                extra_headers={"x-request-id": request_id},
            )  # fmt: skip
            return reply.choices[0].message.content.strip()

        def traffic(prompts: list[tuple[list[dict], str]], tag: str, correct: bool) -> float:
            """Send the prompts (request ids `tag-N`, so that which corrections are held out
            is the same in every run); users correct the wrong answers. Returns exact match."""

            def one(numbered: tuple[int, tuple[list[dict], str]]) -> bool:
                number, prompt = numbered
                request_id = f"{tag}-{number}"
                answer = ask(prompt[0], request_id)
                if correct and answer != prompt[1]:
                    fixed = httpx.post(f"{gw.base_url}/v1/feedback", json={
                        "request_id": request_id, "correction": prompt[1]})  # fmt: skip
                    assert fixed.status_code == 200, fixed.text
                return answer == prompt[1]

            with ThreadPoolExecutor(8) as pool:
                return sum(pool.map(one, enumerate(prompts))) / len(prompts)

        rng = random.Random(0)
        policy = load_policy(_write(tmp_path, POLICY))
        loop = ContinuousLoop.open(
            policy, StackSettings(home=home, actor="tests"), traffic=gw.gateway.traffic
        )
        traffic([_known(rng) for _ in range(120)], "known", correct=True)
        assert "no drift" in loop.step().summary

        before = traffic([_new_phrasing(rng) for _ in range(300)], "shift", correct=True)
        assert before < 0.2  # the demo model does not know this phrasing

        outcome = loop.step()
        assert outcome.summary == "demo@production moved to demo:2", outcome
        events = loop.events.history("demo")
        assert [e.step for e in events] == [
            Step.DRIFT, Step.EVALUATION, Step.DECISION, Step.TRAINING_DATA, Step.JOB,
            Step.VERSION, Step.GATE, Step.PROMOTED,
        ]  # fmt: skip
        assert {e.cycle for e in events} == {outcome.cycle}
        [moved] = [e for e in gw.registry.history("demo", "production") if e.to_version == 2]
        assert moved.gate["passed"] and moved.reason.endswith(outcome.cycle)

        # the gateway serves the new version at once: new inputs in the new phrasing
        unseen = random.Random(99)
        after = traffic([_new_phrasing(unseen) for _ in range(40)], "after", correct=False)
        assert after >= 0.8

    history = subprocess.run(
        [sys.executable, "-m", "evals", "loop", "history", "demo", "--json", "--png",
         str(tmp_path / "loop.png")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "LLMOPS_HOME": str(home)},
    )  # fmt: skip
    assert history.returncode == 0, history.stderr
    assert [e["step"] for e in json.loads(history.stdout)][-1] == "promoted"
    assert (tmp_path / "loop.png").read_bytes()[:4] == b"\x89PNG"
