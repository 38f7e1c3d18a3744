"""Teach the demo model a skill it lacks with a LoRA recipe, and measure exact match on unseen
inputs before and after.

    python scripts/teach_demo_skill.py [--recipe configs/finetune/demo-reverse-lora.yaml]
                                       [--skill reverse] [--rows 100000] [--data-dir data/skills]
                                       [--output results/teach_demo_skill.json]

It uses the registered `demo` model (build it first: `python scripts/build_demo_model.py`),
writes the skill's train and eval splits to `--data-dir`, runs the recipe as a job (as
`llm-finetune run` does), and scores the base and the adapter by greedy exact match on the
eval split, whose inputs never occur in the train split.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.logs import configure_logging
from finetune.demo.evaluation import exact_match_rate
from finetune.demo.skills import read_jsonl, write_skill_splits
from finetune.recipe import load_recipe
from finetune.runner import JobRunner
from finetune.worker import run_job
from registry.service import open_registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe", type=Path, default=Path("configs/finetune/demo-reverse-lora.yaml")
    )
    parser.add_argument("--skill", default="reverse")
    parser.add_argument("--rows", type=int, default=100_000, help="train rows to generate")
    parser.add_argument("--data-dir", type=Path, default=Path("data/skills"))
    parser.add_argument("--output", type=Path, default=Path("results/teach_demo_skill.json"))
    args = parser.parse_args()
    configure_logging()

    files = write_skill_splits(args.data_dir, 0, args.rows, 100, [args.skill])[args.skill]
    recipe = load_recipe(args.recipe)
    recipe = recipe.model_copy(
        update={
            "datasets": [
                spec.model_copy(
                    update={"path": str(files.train if spec.split == "train" else files.eval)}
                )
                for spec in recipe.datasets
            ]
        }
    )
    runner = JobRunner.open()
    registry = open_registry(runner.stack)
    base = registry.resolve(recipe.base_model)
    base_dir = registry.local_copy(base)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    rows = read_jsonl(files.eval)

    def score(model: torch.nn.Module) -> float:
        return exact_match_rate(model.eval(), tokenizer, rows, batch_size=100, max_new_tokens=12)

    before = score(AutoModelForCausalLM.from_pretrained(base_dir))
    started = time.monotonic()
    job = run_job(runner, runner.create(recipe).id, progress=True)
    seconds = time.monotonic() - started
    if job.registered_version is None:
        raise SystemExit(f"job {job.id} {job.status.value}: {job.error}")
    adapter_dir = registry.local_copy(registry.resolve(job.registered_version))
    after = score(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    )
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "base": base.ref,
        "skill": args.skill,
        "train_rows": args.rows,
        "eval_rows": len(rows),
        "job": job.id,
        "fine_tuned_model": job.fine_tuned_model,
        "job_seconds": round(seconds, 1),
        "exact_match_before": before,
        "exact_match_after": after,
        "metrics": job.metrics,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
