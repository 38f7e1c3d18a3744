"""One explanation: attribute a prompt's features to an answer with a method, measure the
attribution's faithfulness, and time it. The caller brings the model and the answer (the
gateway runs its engine's model copy; the command line loads the version itself)."""

import threading
import time
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from evals.explain.attribution import Attribution, attribute
from evals.explain.faithfulness import Faithfulness, comprehensiveness
from evals.explain.features import PromptFeatures
from evals.explain.scoring import AnswerScorer


@dataclass(frozen=True)
class ExplainSettings:
    method: str = "feature_ablation"
    samples: int = 25  # perturbations drawn by shapley, lime and kernel_shap
    steps: int = 16  # integrated gradients' integration steps
    top_k: int = 5  # features listed as the top ones
    seed: int = 0
    max_batch_tokens: int = 8192  # tokens in one forward pass: perturbations per pass


@dataclass(frozen=True)
class Explanation:
    features: list[str]
    answer_tokens: list[str]
    attribution: Attribution
    faithfulness: Faithfulness
    top_features: list[int]  # feature indices, the most positive first
    forward_passes: int
    tokens: int  # tokens run through the model
    seconds: float


def explain(
    model: nn.Module,
    embeddings: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    features: PromptFeatures,
    answer_ids: list[int],
    settings: ExplainSettings,
    cancelled: threading.Event | None = None,
) -> Explanation:
    started = time.perf_counter()
    scorer = AnswerScorer(model, features.ids, answer_ids, cancelled=cancelled)
    result = attribute(
        settings.method,
        model,
        embeddings,
        tokenizer,
        features,
        scorer,
        samples=settings.samples,
        steps=settings.steps,
        seed=settings.seed,
        max_batch_tokens=settings.max_batch_tokens,
    )
    if result.steps is not None:
        result = _with_convergence_delta(result, scorer, features)
    faithfulness = comprehensiveness(scorer, features, result.sequence, seed=settings.seed)
    order = result.sequence.argsort(descending=True)[: settings.top_k].tolist()
    return Explanation(
        features=list(features.values),
        answer_tokens=[tokenizer.decode([t]) for t in answer_ids],
        attribution=result,
        faithfulness=faithfulness,
        top_features=order,
        forward_passes=scorer.forward_passes,
        tokens=scorer.tokens,
        seconds=time.perf_counter() - started,
    )


def _with_convergence_delta(
    result: Attribution, scorer: AnswerScorer, features: PromptFeatures
) -> Attribution:
    """Integrated gradients' completeness error: per answer token, how far the attributions'
    sum is from the log-probability gained from the baseline prompt to the real one."""
    present = torch.tensor([[1.0] * features.n_itp_features, [0.0] * features.n_itp_features])
    real, baseline = scorer.answer_logprobs(features.to_model_input(present))
    assert result.per_token is not None
    delta = (result.per_token.sum(-1) - (real - baseline)).abs().max()
    return replace(result, convergence_delta=float(delta))
