"""Explanation benchmarks: feature ablation against generating the answer once and against
Captum's default settings, and Shapley value sampling against Captum's defaults.

    python scripts/bench_explain.py [--output benchmarks/results/bench_explain.json]

A 32-token prompt (32 token features) and a 16-token answer, on an untrained model of the demo
model's shape (speed does not depend on what a model learned). Every comparison runs its
baseline in the same run and is reported as a ratio; times are the best of a few rounds.
Captum's defaults are `LLMAttribution(...).attribute(inp, target)`: one perturbation per
forward pass, the answer decoded token by token with the key/value cache.
"""

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_record import default_output, write_result
from captum.attr import FeatureAblation, LLMAttribution, ShapleyValueSampling
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.explain.attribution import attribute
from evals.explain.features import prompt_features
from evals.explain.scoring import AnswerScorer
from finetune.demo.random_model import build_random_model

PROMPT_TOKENS, ANSWER_TOKENS, SAMPLES = 32, 16, 25


def best_of(rounds: int, run: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(rounds):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output(__file__))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_random_model(
            Path(tmp) / "model", hidden_size=128, num_layers=2, max_position_embeddings=512
        )
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    words = ["zorblax", "quibbet", "flimmon", "dravik", "plonter", "snarvel", "gubbin"]
    ids = tokenizer(" ".join(words * 8), add_special_tokens=False).input_ids
    for cut in range(PROMPT_TOKENS, len(ids)):  # a prompt of 32 tokens once re-encoded
        features = prompt_features(
            tokenizer, prompt=tokenizer.decode(ids[:cut]), granularity="tokens"
        )
        if len(features.ids) >= PROMPT_TOKENS:
            break
    assert len(features.ids) == PROMPT_TOKENS, len(features.ids)
    prompt = torch.tensor([features.ids])
    with torch.no_grad():
        answer = model.generate(
            prompt, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS, do_sample=False
        )[0, PROMPT_TOKENS:]
    embeddings = model.get_input_embeddings()

    def generate_once() -> None:
        with torch.no_grad():
            model.generate(
                prompt, max_new_tokens=ANSWER_TOKENS, min_new_tokens=ANSWER_TOKENS, do_sample=False
            )

    def ours(method: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            scorer = AnswerScorer(model, features.ids, answer.tolist())
            result = attribute(
                method, model, embeddings, tokenizer, features, scorer,
                samples=SAMPLES, steps=16, seed=0, max_batch_tokens=8192,
            )  # fmt: skip
            return result.per_token

        return run

    def captum(method: type, **settings: Any) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            torch.manual_seed(0)
            kwargs = {"n_samples": SAMPLES} if method is ShapleyValueSampling else {}
            result = LLMAttribution(method(model), tokenizer).attribute(
                features, target=answer, **kwargs, **settings
            )
            return result.token_attr

        return run

    rounds = args.rounds
    generate_s, _ = best_of(rounds, generate_once)
    ablation_s, ablation = best_of(rounds, ours("feature_ablation"))
    captum_ablation_s, captum_ablation = best_of(rounds, captum(FeatureAblation))
    _, exact_ablation = best_of(1, captum(FeatureAblation, use_cached_outputs=False))
    shapley_s, shapley = best_of(rounds, ours("shapley"))
    captum_shapley_s, captum_shapley = best_of(rounds, captum(ShapleyValueSampling))
    _, exact_shapley = best_of(1, captum(ShapleyValueSampling, use_cached_outputs=False))

    def gap(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max())

    report = {
        "prompt_tokens": PROMPT_TOKENS,
        "features": features.n_itp_features,  # the prompt's tokens that are not whitespace
        "answer_tokens": ANSWER_TOKENS,
        "generate_once_s": generate_s,
        "feature_ablation": {
            "ours_s": ablation_s,
            "captum_default_s": captum_ablation_s,
            "vs_generate_once": ablation_s / generate_s,  # target <= 3
            "speedup_vs_captum_default": captum_ablation_s / ablation_s,  # target >= 3
            "max_abs_diff_vs_captum_exact": gap(ablation, exact_ablation),
            "max_abs_diff_vs_captum_default": gap(ablation, captum_ablation),
        },
        "shapley_25_samples": {
            "ours_s": shapley_s,
            "captum_default_s": captum_shapley_s,
            "speedup_vs_captum_default": captum_shapley_s / shapley_s,  # target >= 3
            "max_abs_diff_vs_captum_exact": gap(shapley, exact_shapley),
            "max_abs_diff_vs_captum_default": gap(shapley, captum_shapley),
        },
    }
    write_result(args.output, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
