"""Untrained Llama models with the demo tokenizer, for engine tests and benchmarks: they answer
with varied, deterministic tokens (not meaningful text) and cost no training time."""

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from finetune.demo.skills import SKILLS, generate_splits
from finetune.demo.tokenizer import train_demo_tokenizer


def build_random_model(
    path: Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    initializer_range: float = 0.02,
    vocab_size: int = 300,
    max_position_embeddings: int = 256,
) -> Path:
    """Write a randomly initialised model with 2 attention heads to `path`. A large
    `initializer_range` makes its next-token choices clear-cut, so that two engines' float
    rounding cannot flip a greedy choice."""
    texts = [
        message["content"]
        for skill in SKILLS.values()
        for row in generate_splits(skill, seed, 50, 5)[0]
        for message in row["messages"]
    ]
    tokenizer = train_demo_tokenizer(texts, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
