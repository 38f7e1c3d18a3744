"""The edge benchmark: distil the demo model into a small student, export it to int8 ONNX, and
measure quality, size and decode speed side by side in one run.

    python scripts/bench_edge.py [--output benchmarks/results/bench_edge.json] [--max-steps 3000]
                                 [--demo-dir DIR --data-dir DIR]

Builds the demo model (FULL spec, 2-4 minutes; or takes a built one with --demo-dir and its
skills data with --data-dir) into a fresh registry under a temporary LLMOPS_HOME, distils it
with configs/finetune/demo-distill.yaml, exports the student with `export_onnx(..., "int8")`,
and reports:
- the student's parameters against the teacher's (target <= 0.25) and its exact match on the
  demo suites' skills (add, upper, lookup) against the teacher's (target >= 0.90 of it);
- the int8 ONNX files' size against the student's float32 safetensors (target <= 0.35), the
  per-token decode latency of the int8 ONNX (ONNX Runtime GenAI, KV cache) against eager
  PyTorch (KV cache), batch 1 (target <= 0.6), and the int8 export's exact match against the
  float32 student's (target: within 2 points).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml
from bench_record import default_output, write_result
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.settings import StackSettings
from finetune.demo.build import build_demo_model, register_demo_model
from finetune.demo.evaluation import exact_match_rate
from finetune.demo.skills import exact_match, read_jsonl
from finetune.demo.spec import FULL
from finetune.distill.job import distill, register_distilled
from finetune.distill.recipe import parse_distill_recipe
from finetune.export.onnx import export_onnx, greedy_onnx
from registry.service import open_registry

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "finetune" / "demo-distill.yaml"
SUITE_SKILLS = {"add": 50, "upper": 50, "lookup": 40}  # configs/evals/demo-skills.yaml
MAX_NEW_TOKENS = 12


def suite_rows(data_dir: Path) -> list[dict]:
    return [r for s, n in SUITE_SKILLS.items() for r in read_jsonl(data_dir / s / "eval.jsonl")[:n]]


def prompt_ids(tokenizer, rows: list[dict]) -> list[list[int]]:
    texts = [
        tokenizer.apply_chat_template(
            r["messages"][:-1], add_generation_prompt=True, tokenize=False
        )
        for r in rows
    ]
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def position_table_bytes(onnx_dir: Path) -> int:
    """Bytes of the export's rotary cos/sin tables: their length is the model's context, not
    its weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_dir / "model.onnx")
    return sum(
        numpy_helper.to_array(t).nbytes
        for t in model.graph.initializer
        if t.name in ("cos_cache", "sin_cache")
    )


def onnx_exact_match(onnx_dir: Path, tokenizer, rows: list[dict]) -> float:
    answers = greedy_onnx(onnx_dir, prompt_ids(tokenizer, rows), MAX_NEW_TOKENS)
    replies = [tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    return sum(
        exact_match(reply, r["messages"][-1]["content"])
        for reply, r in zip(replies, rows, strict=True)
    ) / len(rows)


def torch_decode_seconds(model_dir: Path, prompts: list[list[int]], tokens: int) -> float:
    """Seconds per decoded token (after the prompt), eager PyTorch with its KV cache."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    spent, count = 0.0, 0
    with torch.inference_mode():
        for ids in prompts:
            out = model(torch.tensor([ids]), use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            started = time.perf_counter()
            for _ in range(tokens):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            spent += time.perf_counter() - started
            count += tokens
    return spent / count


def onnx_decode_seconds(onnx_dir: Path, prompts: list[list[int]], tokens: int) -> float:
    """Seconds per decoded token (after the first), ONNX Runtime GenAI with its KV cache."""
    import onnxruntime_genai as og

    model = og.Model(str(onnx_dir))
    spent, count = 0.0, 0
    for ids in prompts:
        params = og.GeneratorParams(model)
        total = len(ids) + tokens + 1
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        generator.generate_next_token()
        started = time.perf_counter()
        for _ in range(tokens):
            generator.generate_next_token()
        spent += time.perf_counter() - started
        count += tokens
    return spent / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output(__file__))
    parser.add_argument("--max-steps", type=int, help="distillation steps (default: the recipe's)")
    parser.add_argument("--demo-dir", type=Path, help="a built demo model (with --data-dir)")
    parser.add_argument("--data-dir", type=Path, help="its skills data")
    parser.add_argument("--decode-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        registry = open_registry(StackSettings(home=home, actor="bench"))
        data_dir = args.data_dir or Path(folder) / "skills"
        if args.demo_dir is None:
            build = build_demo_model(Path(folder) / "demo", FULL, data_dir=data_dir)
            register_demo_model(registry, build)
        else:
            registry.register("demo", args.demo_dir)
            registry.set_alias("demo", "production", 1)
        built = time.monotonic()

        data = yaml.safe_load(RECIPE.read_text())
        for spec in data["datasets"]:
            spec["path"] = str(data_dir / Path(spec["path"]).relative_to("data/skills"))
        if args.max_steps:
            data["max_steps"] = args.max_steps
        recipe = parse_distill_recipe(data, str(RECIPE))
        result = distill(recipe, Path(folder) / "job", registry, progress=False)
        student = register_distilled(registry, result, recipe, "bench", None)
        distilled = time.monotonic()

        teacher_dir = registry.local_copy(registry.resolve("demo"))
        student_dir = registry.local_copy(student)
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        rows = suite_rows(data_dir)

        def em(model_dir: Path) -> float:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
            return exact_match_rate(model, tokenizer, rows, 64, MAX_NEW_TOKENS)

        teacher_em, student_em = em(teacher_dir), em(student_dir)
        onnx_version, parity = export_onnx(registry, student.ref, "int8")
        onnx_dir = registry.local_copy(onnx_version)
        int8_em = onnx_exact_match(onnx_dir, tokenizer, rows)
        onnx_bytes = sum(f.stat().st_size for f in onnx_dir.iterdir() if "onnx" in f.name)
        fp32_bytes = sum(f.stat().st_size for f in student_dir.glob("*.safetensors"))
        table_bytes = position_table_bytes(onnx_dir)
        prompts = prompt_ids(tokenizer, rows[:: max(1, len(rows) // 8)][:8])
        torch_s = torch_decode_seconds(student_dir, prompts, args.decode_tokens)
        onnx_s = onnx_decode_seconds(onnx_dir, prompts, args.decode_tokens)

    ratio = student.metrics["parameter_ratio"]
    report = {
        "teacher_parameters": int(student.metrics["teacher_num_parameters"]),
        "student_parameters": int(student.metrics["num_parameters"]),
        "parameter_ratio": ratio,
        "suite_rows": len(rows),
        "teacher_exact_match": teacher_em,
        "student_exact_match": student_em,
        "student_vs_teacher_exact_match": student_em / teacher_em if teacher_em else None,
        "int8_exact_match": int8_em,
        "int8_minus_fp32_exact_match_points": 100 * (int8_em - student_em),
        "int8_parity_token_agreement": parity.token_agreement,
        "int8_onnx_bytes": onnx_bytes,
        "fp32_safetensors_bytes": fp32_bytes,
        "size_ratio": onnx_bytes / fp32_bytes,
        "position_table_bytes": table_bytes,
        "size_ratio_without_position_tables": (onnx_bytes - table_bytes) / fp32_bytes,
        "decode_ms_per_token_torch": 1000 * torch_s,
        "decode_ms_per_token_int8_onnx": 1000 * onnx_s,
        "decode_latency_ratio": onnx_s / torch_s,
        "targets_met": {
            "parameter_ratio <= 0.25": ratio <= 0.25,
            "student/teacher exact match >= 0.90": bool(teacher_em)
            and student_em / teacher_em >= 0.9,
            "size_ratio <= 0.35": onnx_bytes / fp32_bytes <= 0.35,
            "decode_latency_ratio <= 0.6": onnx_s / torch_s <= 0.6,
            "int8 exact match within 2 points": abs(int8_em - student_em) <= 0.02,
        },
        "distill_metrics": student.metrics,
        "seconds": {
            "demo_build": built - started,
            "distill": distilled - built,
            "total": time.monotonic() - started,
        },
    }
    write_result(args.output, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
