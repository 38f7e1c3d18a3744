"""Choosing the next token from a row of logits."""

import torch

from serving.engine import SamplingParams


def shape_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    prompt_ids: list[int],
    output_ids: list[int],
    eos_ids: set[int],
) -> torch.Tensor:
    """One row of logits with the request's penalties, biases and minimum length applied (as
    vLLM applies them: the repetition penalty over prompt and output, the frequency and
    presence penalties over the output): a copy where any applies, else the row itself."""
    penalized = output_ids and (params.frequency_penalty or params.presence_penalty)
    too_short = len(output_ids) < params.min_tokens
    if not (params.repetition_penalty != 1.0 or penalized or params.logit_bias or too_short):
        return logits
    logits = logits.clone()
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted({*prompt_ids, *output_ids}), dtype=torch.long)
        scores = logits[seen]
        penalty = params.repetition_penalty
        logits[seen] = torch.where(scores > 0, scores / penalty, scores * penalty)
    if penalized:
        tokens, counts = torch.tensor(output_ids).unique(return_counts=True)
        logits[tokens] -= counts * params.frequency_penalty + params.presence_penalty
    if params.logit_bias:
        tokens, biases = zip(*params.logit_bias, strict=True)
        logits[list(tokens)] += torch.tensor(biases, dtype=logits.dtype)
    if too_short:
        logits[sorted(eos_ids)] = -float("inf")
    return logits


def next_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """Temperature, top-k, min-p and nucleus (top-p) sampling; greedy rows never get here."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if 0 < params.top_k < probs.shape[-1]:
        kth = torch.topk(probs, params.top_k).values[-1]
        probs[probs < kth] = 0.0
    if params.min_p > 0.0:
        probs[probs < params.min_p * probs.max()] = 0.0
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p * probs.sum()
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
