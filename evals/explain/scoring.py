"""Log-probabilities of an answer after many variants of one prompt, in batched forward passes.

Every row of a batch is the prompt with some features replaced by the baseline, followed by
the answer. Rows keep the prompt's length, so no padding is needed, and the positions before
a row's first change are the original prompt's: their keys and values are computed once per
explanation and shared by every batch."""

import threading

import torch
from torch import nn
from transformers import DynamicCache


class Cancelled(Exception):
    """The client went away; the explanation stops at its next forward pass."""


class AnswerScorer:
    def __init__(
        self,
        model: nn.Module,
        prompt_ids: list[int],
        answer_ids: list[int],
        *,
        cancelled: threading.Event | None = None,
    ):
        self.model = model
        self.prompt = torch.tensor(prompt_ids)
        self.answer = torch.tensor(answer_ids)
        self.cancelled = cancelled or threading.Event()
        self.forward_passes = 0
        self.tokens = 0  # tokens run through the model, the cost charged to the caller
        self._prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def answer_logprobs(self, prompts: torch.Tensor) -> torch.Tensor:
        """`[rows, answer_len]`: each answer token's log-probability after each prompt row."""
        if self.cancelled.is_set():
            raise Cancelled()
        rows, length = prompts.shape
        shared = self._shared_length(prompts)
        cache = None
        if shared:
            widen = (rows, -1, -1, -1)
            cache = DynamicCache(
                [
                    (k[:, :, :shared].expand(widen), v[:, :, :shared].expand(widen))
                    for k, v in self._prefix_cache()
                ]
            )
        ids = torch.cat([prompts[:, shared:], self.answer.expand(rows, -1)], dim=1)
        positions = torch.arange(shared, length + len(self.answer)).expand(rows, -1)
        with torch.no_grad():
            logits = self.model(
                input_ids=ids,
                position_ids=positions,
                past_key_values=cache,
                use_cache=cache is not None,
            ).logits
        self.forward_passes += 1
        self.tokens += ids.numel()
        start = length - 1 - shared  # the logits that predict the answer's first token
        scores = logits[:, start : start + len(self.answer)].float().log_softmax(-1)
        return scores.gather(-1, self.answer.expand(rows, -1).unsqueeze(-1)).squeeze(-1)

    def _shared_length(self, prompts: torch.Tensor) -> int:
        """How many leading positions every row shares with the original prompt (leaving at
        least one position to run, whose logits predict the answer's first token)."""
        differs = (prompts != self.prompt).any(dim=0).nonzero()
        first_change = int(differs[0]) if len(differs) else len(self.prompt)
        return min(first_change, len(self.prompt) - 1)

    def _prefix_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._prefix is None:
            with torch.no_grad():
                out = self.model(input_ids=self.prompt.unsqueeze(0), use_cache=True)
            self.forward_passes += 1
            self.tokens += len(self.prompt)
            self._prefix = [(k, v) for k, v, *_ in out.past_key_values]
        return self._prefix
