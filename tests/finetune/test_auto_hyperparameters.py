"""`auto` hyperparameters that teach: through the OpenAI API with nothing set, a few hundred
rows of a new phrasing of a skill the demo model knows are learned, in minutes on a CPU."""

import io
import json
import random
import time
from pathlib import Path

import openai
import pytest

from finetune.hyperparameters import auto_batch_size, auto_epochs, auto_learning_rate
from tests.finetune.conftest import wait_for_job
from tests.serving.conftest import running_gateway


def test_the_auto_rule() -> None:
    assert (auto_batch_size(300), auto_epochs(300, 4)) == (4, 8)  # about 600 steps
    assert (auto_batch_size(20), auto_epochs(20, 4)) == (4, 25)  # at most 25 passes
    assert (auto_batch_size(100_000), auto_epochs(100_000, 64)) == (64, 1)
    assert auto_learning_rate(128) == 2.5e-3  # the demo model
    assert auto_learning_rate(1024) == pytest.approx(3.125e-4)
    assert auto_learning_rate(4096) == 1e-4  # a 7B Llama
    assert auto_learning_rate(16_384) == 1e-4


def _sums(count: int, seed: int) -> list[dict]:
    """A phrasing of addition the demo model never saw."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Please work out {a} plus {b}, thanks."},
                    {"role": "assistant", "content": str(a + b)},
                ]
            }
        )
    return rows


@pytest.mark.slow
def test_an_api_job_with_auto_settings_teaches_a_new_phrasing(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    train, unseen = _sums(300, seed=1), _sums(60, seed=2)
    seen = {r["messages"][0]["content"] for r in train}
    unseen = [r for r in unseen if r["messages"][0]["content"] not in seen][:50]
    with running_gateway(tmp_path / "home", demo_model_dir) as gw:
        client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="unused", max_retries=0)

        def exact_match(model: str) -> float:
            right = 0
            for row in unseen:
                reply = client.chat.completions.create(
                    model=model, messages=row["messages"][:1], max_tokens=6, temperature=0
                )
                right += reply.choices[0].message.content.strip() == row["messages"][1]["content"]
            return right / len(unseen)

        data = "".join(json.dumps(r) + "\n" for r in train).encode()
        training = client.files.create(file=("sums.jsonl", io.BytesIO(data)), purpose="fine-tune")
        started = time.monotonic()
        job = client.fine_tuning.jobs.create(model="demo", training_file=training.id, seed=0)
        job = wait_for_job(client, job.id, timeout=600)
        took = time.monotonic() - started
        assert job.status == "succeeded", job.error
        assert (job.hyperparameters.batch_size, job.hyperparameters.n_epochs) == (4, 8)
        before, after = exact_match("demo"), exact_match(job.fine_tuned_model)
    assert before < 0.3 and after >= 0.9, (before, after, took)
