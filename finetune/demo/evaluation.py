"""Exact-match scoring of a chat model on skill rows, by batched greedy generation."""

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finetune.demo.skills import exact_match


@torch.inference_mode()
def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[dict[str, str]]],
    batch_size: int,
    max_new_tokens: int,
) -> list[str]:
    """Greedy replies to chat `prompts`, generated in left-padded batches."""
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer.apply_chat_template(
            list(prompts[start : start + batch_size]), add_generation_prompt=True
        )["input_ids"]
        batch = tokenizer.pad({"input_ids": ids}, padding_side="left", return_tensors="pt")
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        replies.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return replies


def exact_match_rate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, Any]],
    batch_size: int,
    max_new_tokens: int,
) -> float:
    """Fraction of `rows` whose final assistant message the model reproduces exactly."""
    prompts = [row["messages"][:-1] for row in rows]
    replies = generate_replies(model, tokenizer, prompts, batch_size, max_new_tokens)
    hits = sum(
        exact_match(reply, row["messages"][-1]["content"])
        for reply, row in zip(replies, rows, strict=True)
    )
    return hits / len(rows)
