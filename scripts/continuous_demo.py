"""The continuous-training loop end to end, through the official `openai` SDK against a
running gateway: traffic on the demo model's skills, then a shift toward a phrasing it lacks
with users correcting its answers through `/v1/feedback`; the loop raises drift, measures the
drop, retrains, gates the candidate on the old and the new tasks and moves `production`; the
gateway then answers the new phrasing, with no restart and no failed request.

    make run                                     # the gateway, in another terminal
    .venv/bin/python scripts/continuous_demo.py  [--base-url http://127.0.0.1:8000]
        [--policy configs/continuous/demo.yaml] [--png results/continuous_demo.png]

The loop runs in this process on the gateway's state (the same LLMOPS_HOME), with the policy
in configs/continuous/demo.yaml. It prints the timeline and draws it.
"""

import argparse
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from evals.continuous.loop import ContinuousLoop
from evals.continuous.policy import load_policy
from evals.continuous.timeline import label, write_png
from finetune.demo.skills import SKILLS

KNOWN = ("add", "upper", "lookup")
Prompt = tuple[list[dict[str, str]], str]  # messages, the right answer


def known(rng: random.Random) -> Prompt:
    skill = SKILLS[rng.choice(KNOWN)]
    value = skill.sample(rng)
    return [{"role": "user", "content": skill.prompt(value)}], skill.answer(value)


def new_phrasing(rng: random.Random) -> Prompt:
    """Addition, asked in a way the demo model never saw."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return [{"role": "user", "content": f"Please work out {a} plus {b}, thanks."}], str(a + b)


class Users:
    """Applications sending chat requests, and people correcting wrong answers."""

    def __init__(self, base_url: str, api_key: str):
        self.client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
        self.feedback = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
        )
        self.failed = 0
        self.sent = 0
        self._lock = threading.Lock()

    def ask(self, prompt: Prompt, correct: bool) -> bool:
        messages, answer = prompt
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model="demo", messages=messages, max_tokens=8, temperature=0
            )
            said = raw.parse().choices[0].message.content.strip()
            if correct and said != answer:
                request_id = raw.headers["x-request-id"]
                reply = self.feedback.post(
                    "/v1/feedback", json={"request_id": request_id, "correction": answer}
                )
                reply.raise_for_status()
        except (openai.APIError, httpx.HTTPError) as err:
            with self._lock:
                self.failed += 1
            print(f"  request failed: {err}", file=sys.stderr)
            return False
        finally:
            with self._lock:
                self.sent += 1
        return said == answer

    def traffic(self, prompts: list[Prompt], correct: bool = True) -> float:
        """Exact match over the prompts."""
        with ThreadPoolExecutor(8) as pool:
            right = sum(pool.map(lambda p: self.ask(p, correct), prompts))
        time.sleep(1.0)  # the gateway stores its traffic log within moments
        return right / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--policy", type=Path, default=Path("configs/continuous/demo.yaml"))
    parser.add_argument("--png", type=Path, default=Path("results/continuous_demo.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    rng = random.Random(args.seed)
    policy = load_policy(args.policy)
    loop = ContinuousLoop.open(policy)
    users = Users(args.base_url, args.api_key)
    window, reference = policy.drift.window, policy.drift.reference.requests

    def step(what: str) -> str:
        outcome = loop.step()
        print(f"[{time.monotonic() - started:6.0f} s] loop, {what}: {outcome.summary}")
        return outcome.summary

    score = users.traffic([known(rng) for _ in range(reference + window)])
    print(f"the demo model on its skills: exact match {score:.2f}")
    step("after steady traffic")

    # Half of the traffic now asks for sums in a new way; users correct what it gets wrong.
    shifted = [new_phrasing(rng) if i % 2 else known(rng) for i in range(3 * window)]
    users.traffic(shifted)
    probe = [new_phrasing(random.Random(f"probe-{i}")) for i in range(50)]  # never corrected
    before = users.traffic(probe, correct=False)
    print(f"the new phrasing before retraining: exact match {before:.2f}")
    summary = step("after the shift")
    after = users.traffic(probe, correct=False)
    print(f"the new phrasing now: exact match {after:.2f}")

    print("\ntimeline (llm-evals loop history demo):")
    history = loop.events.history(policy.model)
    for event in history:
        print(f"  {event.created_at:%H:%M:%S}  {event.step.value:<14} {label(event)}")
    args.png.parent.mkdir(parents=True, exist_ok=True)
    write_png(policy.model, history, loop.monitor.store.history(policy.model), args.png)
    print(
        f"\nwrote {args.png}; {users.sent} requests, {users.failed} failed, "
        f"{time.monotonic() - started:.0f} s"
    )
    if users.failed or "moved to" not in summary or after < 0.8:
        sys.exit(1)


if __name__ == "__main__":
    main()
