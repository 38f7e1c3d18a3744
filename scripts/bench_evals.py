"""Evaluation benchmarks: a suite scored in process (batched) against scoring the same
examples one by one with Hugging Face `generate`.

    python scripts/bench_evals.py [--output benchmarks/results/bench_evals.json]

On the demo world's `demo-skills` suite (140 examples) and the demo model (`--model-dir`, or
built here first, about 2 minutes): an untrained model would not stop at its answers, and
batching pays for the longest answer of a batch. Both sides generate the same greedy tokens
with the same budgets. The baseline runs in the same run; the result is a ratio of the
best of 3 timed rounds after a warm-up.
"""

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_record import default_output, write_result
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.runner import score_suite
from evals.suites import load_suite
from evals.targets import InProcessTarget, chat_ids
from finetune.demo.build import build_demo_model
from finetune.demo.spec import FULL


def best_of(run: Callable[[], None], rounds: int = 3) -> float:
    """The fastest of `rounds` timed runs, after one untimed warm-up."""
    run()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output(__file__))
    parser.add_argument("--suite", default="configs/evals/demo-skills.yaml")
    parser.add_argument("--model-dir", type=Path, help="A built demo model (default: build one)")
    args = parser.parse_args()
    suite = load_suite(args.suite, Path("configs/evals"))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model_dir or build_demo_model(Path(tmp) / "model", FULL).output_dir
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    target = InProcessTarget(model, tokenizer, "bench:1")

    def in_process() -> None:
        asyncio.run(score_suite(suite, target, progress=False))

    def one_by_one() -> None:
        with torch.no_grad():
            for task in suite.tasks:
                for example in task.examples:
                    ids = torch.tensor([chat_ids(tokenizer, example.messages)])
                    model.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=task.spec.generation.max_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )

    batched, single = best_of(in_process), best_of(one_by_one)
    count = sum(len(t.examples) for t in suite.tasks)
    report = {
        "suite": suite.name,
        "examples": count,
        "in_process_s": batched,
        "one_by_one_generate_s": single,
        "in_process_examples_per_s": count / batched,
        "one_by_one_examples_per_s": count / single,
        "speedup": single / batched,  # target >= 8
    }
    write_result(args.output, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
