"""Two runs of one suite side by side: per-metric deltas with paired intervals and tests, and
the examples whose outputs changed."""

from dataclasses import dataclass
from typing import Any

from core.errors import ErrorCode
from evals.errors import EvalsError
from evals.runs import EvalRun
from evals.stats import PairedDelta, paired_delta


@dataclass(frozen=True)
class MetricDelta:
    metric: str  # "task/metric"
    a: float
    b: float
    paired: PairedDelta  # b minus a

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "a": self.a, "b": self.b, **self.paired.to_dict()}


@dataclass(frozen=True)
class Comparison:
    a: EvalRun
    b: EvalRun
    deltas: list[MetricDelta]
    changed: list[dict[str, Any]]  # id, task, reference, a's and b's predictions and scores


def compare_runs(
    a: EvalRun, a_examples: list[dict[str, Any]], b: EvalRun, b_examples: list[dict[str, Any]]
) -> Comparison:
    if a.suite_digest != b.suite_digest:
        raise EvalsError(
            ErrorCode.INVALID,
            f"runs {a.id} ({a.suite}) and {b.id} ({b.suite}) scored different suites or data; "
            "compare runs of the same suite",
            param="run_id",
        )
    by_id = {e["id"]: e for e in b_examples}
    pairs = [(e, by_id[e["id"]]) for e in a_examples if e["id"] in by_id]
    deltas = []
    for metric in sorted(a.metrics):
        task, name = metric.split("/", 1)
        mine = [(x["scores"][name], y["scores"][name]) for x, y in pairs if x["task"] == task]
        paired = paired_delta([y for _, y in mine], [x for x, _ in mine])
        values = a.metrics[metric]["value"], b.metrics[metric]["value"]
        deltas.append(MetricDelta(metric, *values, paired))
    changed = [
        {
            "id": x["id"],
            "task": x["task"],
            "reference": x["reference"],
            "a": x["prediction"],
            "b": y["prediction"],
            "a_scores": x["scores"],
            "b_scores": y["scores"],
        }
        for x, y in pairs
        if x["prediction"] != y["prediction"]
    ]
    return Comparison(a, b, deltas, changed)
