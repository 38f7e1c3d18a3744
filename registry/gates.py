"""Promotion gates: the check a candidate must pass before an alias moves to it.

A gate is any callable `(candidate, champion, alias) -> GateResult`; `champion` is the version
the alias points at now, or None. Evaluation suites plug in their own gates
(`evals.gates:eval_gate`); the registry ships `NoGate` and `MetricGate`. A failing gate's
`details["reason"]` is what the refusal says.
"""

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from core.plugins import load_plugin
from registry.entities import ModelVersion


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Gate(Protocol):
    def __call__(
        self, candidate: ModelVersion, champion: ModelVersion | None, alias: str
    ) -> GateResult: ...


class NoGate:
    """Passes everything; recorded as such, so the audit log shows no gate was in force."""

    def __call__(
        self, candidate: ModelVersion, champion: ModelVersion | None, alias: str
    ) -> GateResult:
        return GateResult("none", True, {"reason": "no promotion gate is configured"})


@dataclass(frozen=True)
class MetricGate:
    """The candidate's `metric` must be present and not worse than the champion's by more
    than `tolerance`."""

    metric: str
    tolerance: float = 0.0
    higher_is_better: bool = True

    def __call__(
        self, candidate: ModelVersion, champion: ModelVersion | None, alias: str
    ) -> GateResult:
        name = f"metric:{self.metric}"
        value = candidate.metrics.get(self.metric)
        if value is None:
            return GateResult(name, False, {"reason": f"{candidate.ref} has no {self.metric}"})
        baseline = champion.metrics.get(self.metric) if champion else None
        details = {"candidate": value, "champion": baseline, "tolerance": self.tolerance}
        if baseline is None:
            return GateResult(name, True, details)
        delta = value - baseline if self.higher_is_better else baseline - value
        return GateResult(name, delta >= -self.tolerance, details)


def load_gate(spec: str | None) -> Gate:
    """Build the gate named by a setting: None, 'metric:NAME' or 'package.module:callable'
    (a factory returning the gate)."""
    if not spec:
        return NoGate()
    kind, _, arg = spec.partition(":")
    if kind == "metric" and arg:
        return MetricGate(arg)
    return load_plugin(spec, "promotion_gate")()
