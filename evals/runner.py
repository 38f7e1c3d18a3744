"""Scoring a suite against a target: every task's answers or log-likelihoods, per-example
scores for every metric, and each metric's mean with a bootstrap interval."""

import math
from typing import Any

from tqdm import tqdm

from evals.stats import bootstrap_interval
from evals.suites import Suite, Task
from evals.targets import Target


def work_units(task: Task) -> int:
    """How many steps scoring a task takes (the progress total)."""
    kinds = {m.kind for m in task.metrics}
    units = len(task.examples) if kinds & {"text", "answer"} else 0
    if "choice" in kinds:
        units += sum(len(e.choices) for e in task.examples)
    if "perplexity" in kinds:
        units += len(task.examples)
    return units


async def score_suite(
    suite: Suite, target: Target, *, progress: bool = True
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Metrics (`task/metric` -> value, low, high) and the per-example records."""
    bar = tqdm(
        total=sum(work_units(t) for t in suite.tasks),
        desc=f"{suite.name} on {target.label}",
        unit="ex",
        disable=not progress,
        leave=False,
    )
    metrics: dict[str, dict[str, float]] = {}
    records: list[dict[str, Any]] = []
    with bar:
        for task in suite.tasks:
            task_records = await _score_task(task, target, bar.update)
            for metric in task.metrics:
                scores = [r["scores"][metric.name] for r in task_records]
                metrics[f"{task.name}/{metric.name}"] = bootstrap_interval(scores).to_dict()
            records += task_records
    return metrics, records


async def _score_task(task: Task, target: Target, advance) -> list[dict[str, Any]]:
    examples = task.examples
    kinds = {m.kind for m in task.metrics}
    records = [
        {"task": task.name, "id": e.id, "messages": e.messages, "reference": e.reference,
         "prediction": None, "scores": {}}
        for e in examples
    ]  # fmt: skip
    if kinds & {"text", "answer"}:
        prompts = [e.messages for e in examples]
        answers = await target.answer(prompts, task.spec.generation, advance)
        for record, answer in zip(records, answers, strict=True):
            record.update(
                prediction=answer.text,
                latency_s=answer.latency_s,
                completion_tokens=answer.completion_tokens,
            )
            record["scores"]["latency_s"] = answer.latency_s
            record["scores"]["completion_tokens"] = float(answer.completion_tokens)
        predictions = [a.text for a in answers]
        for metric in task.metrics:
            if metric.kind == "text":
                assert metric.score is not None
                values = metric.score(predictions, [e.reference for e in examples])
                for record, value in zip(records, values, strict=True):
                    record["scores"][metric.name] = value
    if "choice" in kinds:
        pairs = [(e.messages, c) for e in examples for c in e.choices]
        scores = await target.loglik([p for p, _ in pairs], [c for _, c in pairs], advance)
        offset = 0
        for record, example in zip(records, examples, strict=True):
            mine = [s for s, _ in scores[offset : offset + len(example.choices)]]
            offset += len(example.choices)
            chosen = mine.index(max(mine))
            record["choice"] = chosen
            if record["prediction"] is None:
                record["prediction"] = example.choices[chosen]
            record["scores"]["choice_accuracy"] = float(chosen == example.answer)
    if "perplexity" in kinds:
        scored = await target.loglik(
            [e.messages for e in examples], [e.reference for e in examples], advance
        )
        for record, (logprob, tokens) in zip(records, scored, strict=True):
            record["scores"]["perplexity"] = math.exp(-logprob / max(tokens, 1))
    return records
