"""A LoRA job teaches the demo model a skill it lacks, in a smaller, faster setting than
`configs/finetune/demo-reverse-lora.yaml` (whose full-size result the README quotes)."""

import math
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.settings import StackSettings
from finetune.demo.build import DemoBuild, register_demo_model
from finetune.demo.evaluation import generate_replies
from finetune.demo.skills import exact_match, read_jsonl, write_skill_splits
from finetune.jobs import JobStatus
from finetune.recipe import load_recipe
from finetune.runner import JobRunner
from finetune.worker import run_job
from registry.service import open_registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_lora_job_teaches_reverse_to_a_base_that_lacks_it(
    tmp_path: Path, demo_build: DemoBuild
) -> None:
    settings = StackSettings(home=tmp_path / "home", actor="tests")
    build = demo_build
    register_demo_model(open_registry(settings), build)
    files = write_skill_splits(tmp_path / "data", 0, 25_600, 50, ["reverse"])["reverse"]

    # The shipped recipe, with the steps and rank a test can afford.
    recipe = load_recipe(
        ROOT / "configs" / "finetune" / "demo-reverse-lora.yaml",
        {
            "datasets": [{"path": str(files.train)}],
            "max_steps": 800,
            "save_steps": 800,
            "eval_steps": None,
            "lora_r": 32,
            "lora_alpha": 64,
            "lora_dropout": 0.0,
        },
    )
    runner = JobRunner.open(settings)
    job = run_job(runner, runner.create(recipe).id)
    assert job.status is JobStatus.SUCCEEDED, job.error

    tokenizer = AutoTokenizer.from_pretrained(build.output_dir)
    rows = read_jsonl(files.eval)
    base = AutoModelForCausalLM.from_pretrained(build.output_dir).eval()
    before = _right(base, tokenizer, rows)
    adapter = runner.job_dir(job) / "adapter"
    after = _right(PeftModel.from_pretrained(base, adapter).eval(), tokenizer, rows)
    assert sum(before) < 0.2 * len(rows)  # the base lacks the skill
    # The job taught it: of the rows only one of the two models answers, the tuned one answers
    # so many more that chance cannot explain it (one-sided sign test on those rows, p < 0.01:
    # at least 7 of 7, 10 of 11, 12 of 14). It answered about 10 of the 50 rows that the base
    # did not (exact match 0.2) on a 2-core CPU; the full recipe reaches 0.91.
    taught = sum(a and not b for a, b in zip(after, before, strict=True))
    forgot = sum(b and not a for a, b in zip(after, before, strict=True))
    assert _sign_test(taught, forgot) < 0.01, (taught, forgot)


def _right(model, tokenizer, rows: list[dict]) -> list[bool]:
    """Which rows the model answers exactly (greedy, 12 new tokens, batches of 50)."""
    replies = generate_replies(model, tokenizer, [r["messages"][:-1] for r in rows], 50, 12)
    answers = [r["messages"][-1]["content"] for r in rows]
    return [exact_match(reply, answer) for reply, answer in zip(replies, answers, strict=True)]


def _sign_test(wins: int, losses: int) -> float:
    """The chance of at least `wins` wins of `wins + losses` fair coin tosses."""
    tosses = wins + losses
    return sum(math.comb(tosses, k) for k in range(wins, tosses + 1)) / 2**tosses
