"""Metrics of evaluation suites, scored per example (intervals and paired tests need them).

Text metrics are Hugging Face `evaluate` modules shipped in this folder (no hub is needed) and
loaded from their path (`bleu` too, as sentence BLEU of each example); `choice_accuracy` and
`perplexity` come from the model's log-likelihoods, `latency_s` and `completion_tokens` from
the answers; and a suite may name any `package.module:callable` taking `(prediction, reference)`
and returning a number."""

import difflib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.plugins import load_plugin
from evals.errors import invalid

HERE = Path(__file__).parent
Scorer = Callable[[list[str], list[str]], list[float]]  # predictions, references -> scores


@functools.cache
def _module(name: str) -> Any:
    import evaluate

    return evaluate.load(str(HERE / name))


def _exact(predictions: list[str], references: list[str], **options: Any) -> list[float]:
    # The module's own computation, one example at a time (its public `compute` returns only
    # the mean, and builds an Arrow table per call).
    module = _module("exact_match")
    scores = []
    for p, r in zip(predictions, references, strict=True):
        result = module._compute(predictions=[p.strip()], references=[r.strip()], **options)
        scores.append(float(result["exact_match"]))
    return scores


def _rouge(predictions: list[str], references: list[str]) -> list[float]:
    result = _module("rouge").compute(
        predictions=predictions, references=references, rouge_types=["rougeL"], use_aggregator=False
    )
    return [float(v) for v in result["rougeL"]]


def _bleu(predictions: list[str], references: list[str]) -> list[float]:
    # Sentence BLEU: the module's corpus formula over one example at a time, with its defaults
    # (13a tokens, up to 4-grams, no smoothing), so that scores have a mean, an interval and
    # paired tests like every other metric's. A text with no 4-gram in common scores 0.
    module = _module("bleu")
    scores = []
    for p, r in zip(predictions, references, strict=True):
        try:
            result = module._compute(predictions=[p], references=[[r]])
        except ZeroDivisionError:  # no tokens on one side: the formula divides by lengths
            scores.append(0.0)
            continue
        scores.append(float(result["bleu"]))
    return scores


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # "text": from predictions and references; "choice", "perplexity", "answer"
    score: Scorer | None = None
    higher_is_better: bool = True


TEXT_METRICS: dict[str, Metric] = {
    "exact_match": Metric("exact_match", "text", _exact),
    "normalized_match": Metric(
        "normalized_match",
        "text",
        functools.partial(
            _exact, ignore_case=True, ignore_punctuation=True, regexes_to_ignore=[r"\s+"]
        ),
    ),
    "rouge_l": Metric("rouge_l", "text", _rouge),
    "bleu": Metric("bleu", "text", _bleu),
}
OTHER_METRICS: dict[str, Metric] = {
    "choice_accuracy": Metric("choice_accuracy", "choice"),
    "perplexity": Metric("perplexity", "perplexity", higher_is_better=False),
    "latency_s": Metric("latency_s", "answer", higher_is_better=False),
    "completion_tokens": Metric("completion_tokens", "answer", higher_is_better=False),
}
BUILT_IN = {**TEXT_METRICS, **OTHER_METRICS}
_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def resolve_metric(name: str) -> Metric:
    """A built-in metric, or a `module:callable` scoring one (prediction, reference)."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    if _PLUGIN.match(name):
        scorer = load_plugin(name, "metric")

        def score(predictions: list[str], references: list[str]) -> list[float]:
            return [float(scorer(p, r)) for p, r in zip(predictions, references, strict=True)]

        return Metric(name, "text", score)
    close = difflib.get_close_matches(name, list(BUILT_IN), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? Or " if close else ""
    raise invalid(
        f"unknown metric {name!r}; {hint}choose one of {', '.join(BUILT_IN)}, or name a "
        "`package.module:callable` that scores (prediction, reference)",
        param="metrics",
    )
