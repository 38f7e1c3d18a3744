import time
from pathlib import Path

import pytest

from finetune.demo.random_model import build_random_model
from finetune.demo.skills import write_skill_splits


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained Llama with the demo tokenizer and chat template: seconds to train on."""
    return build_random_model(tmp_path_factory.mktemp("models") / "base")


@pytest.fixture(scope="session")
def skills_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chat JSONL splits of every demo skill: <skill>/train.jsonl and <skill>/eval.jsonl."""
    root = tmp_path_factory.mktemp("skills")
    write_skill_splits(root, seed=0, num_train=64, num_eval=16)
    return root


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def wait_for_job(client, job_id: str, timeout: float = 300):
    """Poll a fine-tuning job through the OpenAI SDK until it ends; returns it."""
    deadline = time.monotonic() + timeout
    job = client.fine_tuning.jobs.retrieve(job_id)
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job_id)
    return job
