"""Parity of an export with its source: both generate greedily from the same prompts, eager
PyTorch with Hugging Face `generate` and the export with ONNX Runtime GenAI."""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass(frozen=True)
class Parity:
    token_agreement: float  # share of the source's greedy tokens the export also chose
    exact_match: float  # share of prompts whose whole greedy answers are equal
    prompts: int


def greedy_onnx(model_dir: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    answers = []
    for ids in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        tokens = []
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        answers.append(tokens)
    return answers


def greedy_torch(model_dir: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    answers = []
    with torch.inference_mode():
        for ids in prompts:
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            answers.append(out[0, len(ids) :].tolist())
    return answers


def measure_parity(
    source_dir: Path, onnx_dir: Path, prompts: list[str], max_new_tokens: int = 24
) -> Parity:
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    ids = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    ids = [tokenizer(text, add_special_tokens=False).input_ids for text in ids]
    expected = greedy_torch(source_dir, ids, max_new_tokens)
    got = greedy_onnx(onnx_dir, ids, max_new_tokens)
    agreeing = sum(
        a == b for e, g in zip(expected, got, strict=True) for a, b in zip(e, g, strict=False)
    )
    return Parity(
        token_agreement=agreeing / max(1, sum(len(e) for e in expected)),
        exact_match=sum(e == g for e, g in zip(expected, got, strict=True)) / len(prompts),
        prompts=len(prompts),
    )
