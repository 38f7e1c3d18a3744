"""Evaluation benchmarks: a suite scored in process (batched) against scoring the same
examples one by one with Hugging Face `generate`.

    python scripts/bench_evals.py [--output results/bench_evals.json]

On the demo world's `demo-skills` suite (140 examples) and a model of the demo model's shape,
untrained (speed does not depend on what it learned); both sides generate the same greedy
tokens with the same budgets. The baseline runs in the same run; the result is a ratio.
"""

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.runner import score_suite
from evals.suites import load_suite
from evals.targets import InProcessTarget, chat_ids
from finetune.demo.random_model import build_random_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("results/bench_evals.json"))
    parser.add_argument("--suite", default="configs/evals/demo-skills.yaml")
    args = parser.parse_args()
    suite = load_suite(args.suite, Path("configs/evals"))
    with tempfile.TemporaryDirectory() as tmp:
        path = build_random_model(Path(tmp) / "model", hidden_size=128, num_layers=2)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    target = InProcessTarget(model, tokenizer, "bench:1")

    started = time.perf_counter()
    asyncio.run(score_suite(suite, target, progress=False))
    batched = time.perf_counter() - started

    started = time.perf_counter()
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
    one_by_one = time.perf_counter() - started
    count = sum(len(t.examples) for t in suite.tasks)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "suite": suite.name,
        "examples": count,
        "in_process_s": batched,
        "one_by_one_generate_s": one_by_one,
        "in_process_examples_per_s": count / batched,
        "one_by_one_examples_per_s": count / one_by_one,
        "speedup": one_by_one / batched,  # target >= 8
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
