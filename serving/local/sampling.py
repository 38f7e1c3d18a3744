"""Choosing the next token from a row of logits."""

import torch

from serving.engine import SamplingParams


def next_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """Temperature and nucleus (top-p) sampling; greedy rows never get here."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def prompt_token_logprobs(
    logits: torch.Tensor, ids: list[int], top: int
) -> list[tuple[float | None, list[tuple[int, float]]]]:
    """Each prompt token's log-probability given the tokens before it (None for the first),
    with its `top` most likely alternatives; `logits` are the model's at the prompt's
    positions."""
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    scores = logprobs.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1).tolist()
    alternatives: list[list[tuple[int, float]]] = [[] for _ in scores]
    if top:
        values, indices = torch.topk(logprobs, top, dim=-1)
        alternatives = [
            list(zip(i, v, strict=True))
            for i, v in zip(indices.tolist(), values.tolist(), strict=True)
        ]
    return [(None, []), *zip(scores, alternatives, strict=True)]


def token_logprobs(
    logits: torch.Tensor, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of `token` and its `top` most likely alternatives."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    alternatives = []
    if top:
        values, indices = torch.topk(logprobs, top)
        alternatives = list(zip(indices.tolist(), values.tolist(), strict=True))
    return float(logprobs[token]), alternatives
