"""Parity of an export with its source: both generate greedily from the same prompts, eager
PyTorch with Hugging Face `generate` and the export on its own runtime. An export whose
greedy tokens agree too rarely is refused before anything is registered."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from core.errors import ErrorCode
from finetune.demo.skills import SKILLS, generate_splits
from finetune.errors import FinetuneError

Precision = Literal["fp32", "int8", "int4"]
MIN_AGREEMENT: dict[str, float] = {"fp32": 0.99, "int8": 0.9, "int4": 0.8}
# An export's greedy answers to token-id prompts: (prompts, max_new_tokens) -> answers.
Greedy = Callable[[list[list[int]], int], list[list[int]]]


@dataclass(frozen=True)
class Parity:
    token_agreement: float  # share of the source's greedy tokens the export also chose
    exact_match: float  # share of prompts whose whole greedy answers are equal
    prompts: int


def default_prompts(count: int = 32) -> list[str]:
    """Questions in plain language, the demo world's evaluation questions of every skill."""
    rows = [r for s in SKILLS.values() for r in generate_splits(s, 7, 0, count)[1]]
    return [r["messages"][0]["content"] for r in rows[:: max(1, len(rows) // count)]][:count]


def chat_prompts(tokenizer_dir: Path, prompts: list[str]) -> list[list[int]]:
    """Each question as one user turn of the chat template, ready for the answer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    return [tokenizer(text, add_special_tokens=False).input_ids for text in texts]


def greedy_torch(
    model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int
) -> list[list[int]]:
    model = model.eval()
    answers = []
    with torch.inference_mode():
        for ids in prompts:
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=model.config.pad_token_id,
            )
            answers.append(out[0, len(ids) :].tolist())
    return answers


def measure_parity(
    source_dir: Path, export: Greedy, prompts: list[str], max_new_tokens: int = 24
) -> Parity:
    ids = chat_prompts(source_dir, prompts)
    source = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32)
    expected = greedy_torch(source, ids, max_new_tokens)
    got = export(ids, max_new_tokens)
    agreeing = sum(
        a == b for e, g in zip(expected, got, strict=True) for a, b in zip(e, g, strict=False)
    )
    return Parity(
        token_agreement=agreeing / max(1, sum(len(e) for e in expected)),
        exact_match=sum(e == g for e, g in zip(expected, got, strict=True)) / len(prompts),
        prompts=len(prompts),
    )


def require_parity(parity: Parity, what: str, precision: Precision, threshold: float) -> None:
    if parity.token_agreement < threshold:
        raise FinetuneError(
            ErrorCode.INVALID,
            f"{what} agrees with eager PyTorch on {parity.token_agreement:.1%} of greedy "
            f"tokens ({parity.exact_match:.1%} of answers exactly), below the {threshold:.0%} "
            f"required for {precision}; nothing was registered",
            param="precision",
        )
