"""The eval gate: a promotion must not make guarded metrics worse, and must make target
metrics better, on the suites configured for the model and alias, judged by paired tests so
that noise does not decide.

Enable it with `LLMOPS_PROMOTION_GATE=evals.gates:eval_gate`; the suites guarding each alias
are in `configs/evals/gates.yaml` (`LLMOPS_EVALS_GATES_FILE`):

    models:
      demo:
        production:
          suites: [demo-skills]
          guard: {"*/exact_match": 0.02}   # may not drop by more (significantly)
          improve: ["reverse/exact_match"]  # must rise (significantly)
          alpha: 0.05

A metric is `task/metric`; `*/metric` is that metric on every task. Fresh runs of the same
suite on the same version are reused."""

import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from core.configs import load_yaml_config
from evals.compare import MetricDelta
from evals.settings import EvalsSettings
from registry.entities import ModelVersion
from registry.gates import GateResult

if TYPE_CHECKING:
    from evals.service import Evaluations


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AliasGate(_Strict):
    suites: list[str] = Field(min_length=1, description="Suites run on candidate and champion.")
    guard: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="metric -> largest drop tolerated."
    )
    improve: list[str] = Field(default_factory=list, description="Metrics that must rise.")
    alpha: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.05, description="A change counts when its paired test's p-value is below alpha."
    )


class GatesConfig(_Strict):
    models: dict[str, dict[str, AliasGate]] = Field(default_factory=dict)


def load_gates(path: Path) -> GatesConfig:
    if not path.is_file():
        return GatesConfig()
    return load_yaml_config(path, GatesConfig, "gate config")


def _matches(metric: str, selector: str) -> bool:
    return fnmatch.fnmatchcase(metric, selector)


def judge(deltas: list[MetricDelta], config: AliasGate) -> list[str]:
    """Why the candidate fails (empty when it passes)."""
    problems = []
    for selector, tolerance in config.guard.items():
        for d in (d for d in deltas if _matches(d.metric, selector)):
            change = d.paired.delta.value
            if change < -tolerance and d.paired.p_value < config.alpha:
                problems.append(
                    f"{d.metric} fell from {d.a:.4g} to {d.b:.4g} (by {-change:.4g}, more than "
                    f"{tolerance:g}; p={d.paired.p_value:.3g})"
                )
    for selector in config.improve:
        matched = [d for d in deltas if _matches(d.metric, selector)]
        if not matched:
            problems.append(f"no metric {selector} in the suites' results")
        for d in matched:
            if not (d.paired.delta.value > 0 and d.paired.p_value < config.alpha):
                problems.append(
                    f"{d.metric} did not improve significantly ({d.a:.4g} -> {d.b:.4g}, "
                    f"p={d.paired.p_value:.3g})"
                )
    return problems


class EvalGate:
    """Loaded with every registry, so it opens its evaluations (and their model-loading
    imports) only when a promotion first needs them."""

    def __init__(self, gates_file: Path, evaluations: "Evaluations | None" = None):
        self.gates_file = gates_file
        self._evaluations = evaluations

    @property
    def evaluations(self) -> "Evaluations":
        if self._evaluations is None:
            from evals.service import Evaluations

            self._evaluations = Evaluations.open()
        return self._evaluations

    def __call__(
        self, candidate: ModelVersion, champion: ModelVersion | None, alias: str
    ) -> GateResult:
        config = load_gates(self.gates_file).models.get(candidate.name, {}).get(alias)
        if config is None:
            return GateResult("eval", True, {"reason": f"no suites guard {candidate.name}@{alias}"})
        return gate_result(self.evaluations, candidate, champion, config)


def gate_result(
    evaluations: "Evaluations",
    candidate: ModelVersion,
    champion: ModelVersion | None,
    config: AliasGate,
) -> GateResult:
    """Score both on the config's suites (fresh runs reused) and judge the deltas."""
    runs: dict[str, dict[str, str]] = {}
    deltas: list[MetricDelta] = []
    for name in config.suites:
        suite = evaluations.suite(name)
        ran = evaluations.run(suite, candidate.ref, progress=False, reuse=True)
        runs[suite.name] = {"candidate": ran.id}
        if champion is not None:
            base = evaluations.run(suite, champion.ref, progress=False, reuse=True)
            runs[suite.name]["champion"] = base.id
            deltas += evaluations.compare(base.id, ran.id).deltas
    problems = judge(deltas, config) if champion is not None else []
    details: dict[str, Any] = {
        "runs": runs,
        "deltas": [d.to_dict() for d in deltas],
        "alpha": config.alpha,
        "reason": "; ".join(problems)
        if problems
        else (
            f"no guarded metric regressed against {champion.ref}"
            if champion is not None
            else "no current version to compare with"
        ),
    }
    return GateResult("eval", not problems, details)


def eval_gate() -> EvalGate:
    """The factory `LLMOPS_PROMOTION_GATE=evals.gates:eval_gate` names."""
    return EvalGate(EvalsSettings().gates_file)
