"""Federated LoRA vs. each silo alone vs. pooled (centralized) training, on the demo world.

    python scripts/bench_federated.py [--config configs/federated/demo-three-silos.yaml]
                                      [--rows 6000]
                                      [--output benchmarks/results/bench_federated.json]

It uses the registered `demo` model (build it first: `python scripts/build_demo_model.py`).
Three silos with different data (each holds the questions about a different third of the
items of a colour table the demo model never saw, `NEW_COLOURS`) train together through
Flower's deployment runtime (`llm-finetune federated run`, separate processes). Each silo's
local-only adapter trains on its own rows for the steps it trained in the federation; the
centralized adapter trains on the pooled rows for all silos' steps together. Every adapter is
scored by greedy exact match on the union eval (held-out questions about every item). Bytes
per round (what the coordinator sent and received) are compared with the full model's
weights, per round and per silo reply (what full-model FedAvg would send in each message).
"""

import argparse
import json
import re
import time
from pathlib import Path

import torch
from bench_record import default_output, write_result
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.demo.evaluation import exact_match_rate
from finetune.demo.skills import NEW_COLOURS, NEW_LOOKUP, generate_splits, read_jsonl, write_jsonl
from finetune.federated.config import load_federated_config
from finetune.federated.job import job_recipe
from finetune.federated.plan import RoundPlan
from finetune.federated.silo import TRAIN_FILE, silo_recipe
from finetune.kinds import FEDERATED
from finetune.runner import JobRunner
from finetune.trainer import train
from finetune.worker import run_job
from registry.service import open_registry

SILOS = ("a", "b", "c")
ITEM = re.compile(r"(\w+)[?.]$")  # the lookup questions end with the item


def write_silos(root: Path, rows: int) -> tuple[dict[str, Path], list[dict]]:
    """Silo folders, each holding the rows of a different third of a colour table the demo
    model never saw, and the union eval rows (held-out questions about every item)."""
    train_rows, eval_rows = generate_splits(NEW_LOOKUP, 0, rows, 100)
    items = sorted(NEW_COLOURS)
    owner = {item: SILOS[i * len(SILOS) // len(items)] for i, item in enumerate(items)}
    silos: dict[str, list[dict]] = {silo: [] for silo in SILOS}
    for row in train_rows:
        silos[owner[ITEM.search(row["messages"][0]["content"]).group(1)]].append(row)
    folders = {}
    for silo, silo_rows in silos.items():
        folders[silo] = root / silo
        write_jsonl(folders[silo] / TRAIN_FILE, silo_rows)
    folders["pooled"] = root / "pooled"
    write_jsonl(folders["pooled"] / TRAIN_FILE, train_rows)
    return folders, eval_rows


def score(base_dir: Path, adapter_dir: Path, eval_rows: list[dict]) -> float:
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    return exact_match_rate(model, tokenizer, eval_rows, batch_size=64, max_new_tokens=12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=Path("configs/federated/demo-three-silos.yaml")
    )
    parser.add_argument("--rows", type=int, default=6000, help="train rows of all silos together")
    parser.add_argument("--data-dir", type=Path, default=Path("data/federated"))
    parser.add_argument("--output", type=Path, default=default_output(__file__))
    args = parser.parse_args()

    folders, eval_rows = write_silos(args.data_dir, args.rows)
    config = load_federated_config(args.config)
    config = config.model_copy(
        update={
            "silos": [
                s.model_copy(update={"data": str(folders[s.id].resolve())}) for s in config.silos
            ]
        }
    )
    runner = JobRunner.open()
    registry = open_registry(runner.stack)
    base = registry.resolve(config.base_model)
    base_dir = registry.local_copy(base)

    started = time.monotonic()
    job = runner.store.create(
        kind=FEDERATED,
        model=config.base_model,
        recipe=job_recipe(config, "run"),
        created_by=runner.stack.actor,
        suffix="federated",
    )
    job = run_job(runner, job.id)
    assert job.registered_version, job.error
    federated_s = time.monotonic() - started
    federated = registry.resolve(job.registered_version)
    lineage = json.loads((registry.local_copy(federated) / "federation.json").read_text())

    steps = config.rounds * config.training.local_steps
    budgets = {silo.id: steps for silo in config.silos}
    budgets["pooled"] = steps * len(config.silos)
    adapters = {}
    for name, budget in budgets.items():
        plan = RoundPlan(
            round=0,
            base_model=base.ref,
            lora=config.lora,
            training=config.training.model_copy(update={"local_steps": budget}),
        )
        recipe = silo_recipe(plan, base.ref, folders[name] / TRAIN_FILE)
        work = args.data_dir / "adapters" / name
        adapters[name] = train(recipe, work, registry=registry, progress=False).adapter_dir

    exact = {"federated": score(base_dir, registry.local_copy(federated), eval_rows)}
    for name, adapter_dir in adapters.items():
        exact["centralized" if name == "pooled" else f"local_{name}"] = score(
            base_dir, adapter_dir, eval_rows
        )
    per_round = lineage["per_round"]
    round_bytes = max(r["bytes_sent"] + r["bytes_received"] for r in per_round)
    # Full-model FedAvg would send the whole model in each of these messages.
    reply_bytes = max(r["bytes_received"] / len(r["silos"]) for r in per_round)
    result = {
        "config": str(args.config),
        "rows": {name: len(read_jsonl(folder / TRAIN_FILE)) for name, folder in folders.items()},
        "eval_rows": len(eval_rows),
        "steps": {"per_silo": steps, "centralized": budgets["pooled"]},
        "exact_match_union_eval": exact,
        "federated_vs_best_local": exact["federated"]
        - max(v for k, v in exact.items() if k.startswith("local_")),
        "federated_over_centralized": exact["federated"] / max(exact["centralized"], 1e-9),
        "bytes_per_round_max": round_bytes,
        "full_model_bytes": lineage["full_model_bytes"],
        "round_bytes_over_full_model": round_bytes / lineage["full_model_bytes"],
        "reply_bytes_over_full_model": reply_bytes / lineage["full_model_bytes"],
        "federated_seconds": federated_s,
        "per_round": per_round,
    }
    write_result(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k != "per_round"}, indent=1))


if __name__ == "__main__":
    main()
