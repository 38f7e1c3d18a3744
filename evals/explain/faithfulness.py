"""Does an explanation mean anything? ERASER-style comprehensiveness against a random baseline:
how much the answer's log-probability drops when the top-k attributed features are removed,
against removing k features drawn at random."""

from dataclasses import dataclass

import torch

from evals.explain.features import PromptFeatures
from evals.explain.scoring import AnswerScorer


@dataclass(frozen=True)
class Faithfulness:
    k: int
    top_k_drop: float  # answer log-probability lost without the top-k features
    random_drop: float  # the same without k random features, averaged over the trials
    trials: int

    @property
    def score(self) -> float:
        """Above 0: the attributed features matter more than chance ones."""
        return self.top_k_drop - self.random_drop


def default_k(features: int) -> int:
    """A fifth of the features, at least one (ERASER's 20% rationale)."""
    return max(1, round(0.2 * features))


def comprehensiveness(
    scorer: AnswerScorer,
    features: PromptFeatures,
    attribution: torch.Tensor,
    *,
    k: int | None = None,
    trials: int = 8,
    seed: int = 0,
) -> Faithfulness:
    n = features.n_itp_features
    k = min(n, k or default_k(n))
    generator = torch.Generator().manual_seed(seed)
    present = torch.ones(2 + trials, n)
    present[1, attribution.argsort(descending=True)[:k]] = 0
    for trial in range(trials):
        present[2 + trial, torch.randperm(n, generator=generator)[:k]] = 0
    totals = scorer.answer_logprobs(features.to_model_input(present)).sum(-1)
    drops = totals[0] - totals[1:]
    return Faithfulness(
        k=k, top_k_drop=float(drops[0]), random_drop=float(drops[1:].mean()), trials=trials
    )
