"""The continuous-training loop in a shortened form, on the demo model behind a real gateway:
traffic moves to a phrasing the model does not know, users correct its answers through
`/v1/feedback`, and one step of the loop goes from drift through evaluation, a fine-tuning
job and the gate to `production`, after which the gateway answers the new phrasing."""

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
from evals.continuous.events import Step
from evals.continuous.loop import ContinuousLoop
from evals.continuous.policy import load_policy
from finetune.demo.skills import SKILLS
from tests.serving.conftest import running_gateway

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
