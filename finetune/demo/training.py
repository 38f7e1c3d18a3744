"""Supervised training on chat rows with a plain torch loop; the loss covers assistant tokens."""

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finetune.demo.spec import DemoSpec

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def encode_rows(
    tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, Any]]
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per row, labels masked to the assistant tokens."""
    encoded = tokenizer.apply_chat_template(
        [row["messages"] for row in rows], return_dict=True, return_assistant_tokens_mask=True
    )
    examples = []
    for ids, mask in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True):
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]
        examples.append((ids, labels))
    return examples


def collate(
    examples: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad a batch into input_ids, attention_mask and labels."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE_INDEX)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warmup to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(
    model: PreTrainedModel,
    examples: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    spec: DemoSpec,
) -> float:
    """Train `model` in place for `spec.steps` steps; returns the last logged mean loss."""
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=spec.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=spec.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, spec.warmup_steps, spec.steps)
    )
    model.train()
    order = torch.randperm(len(examples), generator=generator).tolist()
    cursor, running, counted, last_loss = 0, 0.0, 0, math.nan
    for step in range(1, spec.steps + 1):
        if cursor + spec.batch_size > len(order):
            order = torch.randperm(len(examples), generator=generator).tolist()
            cursor = 0
        batch = collate([examples[i] for i in order[cursor : cursor + spec.batch_size]], pad_id)
        cursor += spec.batch_size
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.item()
        counted += 1
        if step % spec.log_every == 0 or step == spec.steps:
            last_loss = running / counted
            log.info(
                "step %d/%d  loss %.4f  lr %.2e",
                step,
                spec.steps,
                last_loss,
                scheduler.get_last_lr()[0],
            )
            running, counted = 0.0, 0
    model.eval()
    return last_loss
