"""Training of the demo base model: a plain torch loop over encoded chat rows (the loss covers
assistant tokens), full-weight and deterministic."""

import logging
import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from finetune.data import Collator, Example
from finetune.demo.spec import DemoSpec

log = logging.getLogger(__name__)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warmup to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(
    model: PreTrainedModel,
    examples: Sequence[Example],
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
    collate = Collator(pad_id)
    model.train()
    order = torch.randperm(len(examples), generator=generator).tolist()
    cursor, running, counted, last_loss = 0, 0.0, 0, math.nan
    for step in range(1, spec.steps + 1):
        if cursor + spec.batch_size > len(order):
            order = torch.randperm(len(examples), generator=generator).tolist()
            cursor = 0
        batch = collate([examples[i] for i in order[cursor : cursor + spec.batch_size]])
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
