"""Pass or fail, per example: what the Evals API's counts are made of.

A suite's metrics are scores, reported as means with intervals. Those whose per-example score
is 0 or 1 by construction (`exact_match`, `normalized_match`, `choice_accuracy`) also grade an
example: 1 passes. The others (`rouge_l`, `perplexity`, `latency_s`, `completion_tokens`,
plugins) measure without a threshold the suite could be held to, so they grade nothing. An
example passes when every grading metric of its task passes (a task without one: always)."""

from typing import Any

GRADING = ("exact_match", "normalized_match", "choice_accuracy")


def grades(metric: str) -> bool:
    return metric in GRADING


def criterion(task: str, metric: str) -> str:
    """A testing criterion's name: `task/metric`, as the run's metrics are named."""
    return f"{task}/{metric}"


def example_results(record: dict[str, Any]) -> list[tuple[str, str, float, bool]]:
    """(criterion, metric, score, passed) for each grading metric of a recorded example."""
    return [
        (criterion(record["task"], metric), metric, float(score), float(score) >= 1.0)
        for metric, score in record["scores"].items()
        if grades(metric)
    ]


def example_passed(record: dict[str, Any]) -> bool:
    return all(passed for *_, passed in example_results(record))


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of a finished run, stored with it: examples passed and failed, per criterion
    too, and the answers generated (with their tokens)."""
    passed = sum(example_passed(r) for r in records)
    criteria: dict[str, dict[str, int]] = {}
    for record in records:
        for name, _, _, ok in example_results(record):
            counts = criteria.setdefault(name, {"passed": 0, "failed": 0})
            counts["passed" if ok else "failed"] += 1
    answered = [r for r in records if "completion_tokens" in r]
    return {
        "total": len(records),
        "passed": passed,
        "failed": len(records) - passed,
        "criteria": criteria,
        "answers": len(answered),
        "completion_tokens": sum(int(r["completion_tokens"]) for r in answered),
    }
