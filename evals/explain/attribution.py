"""Attribution methods through Captum's LLM attribution API.

Perturbation methods run through `LLMAttribution` with a forward function that scores a whole
batch of perturbations in one pass (`AnswerScorer`), where Captum's own runs one perturbation
and one answer token per forward pass. Integrated gradients run through
`LLMGradientAttribution` on the input embeddings."""

from dataclasses import dataclass
from typing import Any

import torch
from captum.attr import (
    FeatureAblation,
    KernelShap,
    LayerIntegratedGradients,
    Lime,
    LLMAttribution,
    LLMGradientAttribution,
    ShapleyValueSampling,
)
from torch import nn
from transformers import PreTrainedTokenizerBase

from evals.errors import invalid
from evals.explain.features import PromptFeatures
from evals.explain.protocol import METHODS
from evals.explain.scoring import AnswerScorer

PERTURBATION_METHODS: dict[str, type] = {
    "feature_ablation": FeatureAblation,
    "shapley": ShapleyValueSampling,
    "lime": Lime,
    "kernel_shap": KernelShap,
}
GRADIENT_METHODS = ("integrated_gradients",)


@dataclass(frozen=True)
class Attribution:
    sequence: torch.Tensor  # [features]: to the answer's total log-probability
    per_token: torch.Tensor | None  # [answer tokens, features]; None for lime and kernel_shap
    samples: int | None = None  # perturbations drawn (sampling methods)
    steps: int | None = None  # integration steps (integrated gradients)
    convergence_delta: float | None = None  # integrated gradients' completeness error


class BatchedLLMAttribution(LLMAttribution):
    """`LLMAttribution` whose forward function scores a batch of perturbations at once."""

    def __init__(self, method: Any, tokenizer: PreTrainedTokenizerBase, scorer: AnswerScorer):
        super().__init__(method, tokenizer)
        self.scorer = scorer

    def _forward_func(self, perturbed_tensor, inp, target_tokens, *_args) -> torch.Tensor:  # type: ignore[override]
        logprobs = self.scorer.answer_logprobs(inp.to_model_input(perturbed_tensor))
        total = logprobs.sum(-1, keepdim=True)
        if self.include_per_token_attr:
            return torch.cat([total, logprobs], dim=1)
        return total.squeeze(-1)


def perturbations_per_pass(features: PromptFeatures, answer_len: int, max_batch_tokens: int) -> int:
    """How many perturbations one forward pass scores: as many rows as the token budget holds."""
    row = len(features.ids) + answer_len
    return max(1, min(features.n_itp_features + 1, max_batch_tokens // row))


def attribute(
    method: str,
    model: nn.Module,
    embeddings: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    features: PromptFeatures,
    scorer: AnswerScorer,
    *,
    samples: int,
    steps: int,
    seed: int,
    max_batch_tokens: int,
) -> Attribution:
    answer = scorer.answer
    if method == "integrated_gradients":
        return _integrated_gradients(model, embeddings, tokenizer, features, answer, steps)
    if method not in PERTURBATION_METHODS:
        raise invalid(
            f"unknown method {method!r}; choose one of {', '.join(METHODS)}", param="method"
        )
    batch = perturbations_per_pass(features, len(answer), max_batch_tokens)
    explainer = BatchedLLMAttribution(PERTURBATION_METHODS[method](model), tokenizer, scorer)
    kwargs: dict[str, Any] = {"perturbations_per_eval": batch}
    drawn = None if method == "feature_ablation" else samples
    if drawn is not None:
        kwargs["n_samples"] = drawn
    torch.manual_seed(seed)
    result = explainer.attribute(features, target=answer, **kwargs)
    return Attribution(
        sequence=result.seq_attr.detach().cpu().float(),
        per_token=None if result.token_attr is None else result.token_attr.detach().cpu().float(),
        samples=drawn,
    )


def _integrated_gradients(model, embeddings, tokenizer, features, answer, steps) -> Attribution:
    explainer = LLMGradientAttribution(LayerIntegratedGradients(model, embeddings), tokenizer)
    result = explainer.attribute(features.token_features(), target=answer, n_steps=steps)
    per_token = features.tokens_to_features(result.token_attr.detach().cpu().float())
    return Attribution(sequence=per_token.sum(0), per_token=per_token, steps=steps)
