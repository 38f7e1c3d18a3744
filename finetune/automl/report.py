"""A study as a table of its trials and as Optuna's plots (PNG): the optimization history,
parameter importances and, with several objectives, the Pareto front; and as a summary of
its trials with the best ones marked, for the console."""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"), so no display is needed
import optuna
from optuna.trial import TrialState
from optuna.visualization import matplotlib as optuna_plots

from core.settings import StackSettings
from finetune.automl.search import RecipeSearch
from finetune.automl.storage import SEARCH_ATTR, open_study, study_storage
from finetune.automl.study import REGISTERED_ATTR
from finetune.automl.trial import JOB_ATTR, METRICS_ATTR


def trial_rows(study: optuna.Study, search: RecipeSearch) -> tuple[list[str], list[list[Any]]]:
    """Header and one row per trial: number, state, objective values, steps, params, job."""
    params = list(search.space)
    header = ["trial", "state", *search.metrics, "steps", *params, "job"]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        metrics = trial.user_attrs.get(METRICS_ATTR, {})
        values = trial.values or [None] * len(search.metrics)
        if trial.state is TrialState.PRUNED:  # the value it was pruned on, at that step
            values = [trial.intermediate_values.get(trial.last_step)] if trial.last_step else values
        rows.append(
            [
                trial.number,
                trial.state.name.lower(),
                *(f"{v:.4g}" if v is not None else "" for v in values),
                int(metrics["steps"]) if "steps" in metrics else "",
                *(trial.params.get(p, "") for p in params),
                trial.user_attrs.get(JOB_ATTR, ""),
            ]
        )
    return header, rows


def _save(axes: Any, path: Path) -> Path:
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_plots(study: optuna.Study, search: RecipeSearch, out: Path) -> list[Path]:
    """The study's plots as PNG files in `out`; those that need two complete trials (the
    importances) or several objectives (the Pareto front) only where they apply."""
    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for index, metric in enumerate(search.metrics):
            history = optuna_plots.plot_optimization_history(
                study,
                target=(lambda t, i=index: t.values[i]) if len(search.metrics) > 1 else None,
                target_name=metric,
            )
            suffix = f"-{metric}" if len(search.metrics) > 1 else ""
            written.append(_save(history, out / f"history{suffix}.png"))
        if len(complete) >= 2:
            for index, metric in enumerate(search.metrics):
                importances = optuna_plots.plot_param_importances(
                    study,
                    target=(lambda t, i=index: t.values[i]) if len(search.metrics) > 1 else None,
                    target_name=metric,
                )
                suffix = f"-{metric}" if len(search.metrics) > 1 else ""
                written.append(_save(importances, out / f"importances{suffix}.png"))
        if len(search.metrics) in (2, 3) and complete:
            pareto = optuna_plots.plot_pareto_front(study, target_names=search.metrics)
            written.append(_save(pareto, out / "pareto.png"))
    return written


@dataclass(frozen=True)
class TrialView:
    number: int
    state: str
    values: list[float | None]  # one per objective; none where the trial did not finish
    params: dict[str, Any]
    job: str
    best: bool  # on the Pareto front (several objectives), or the best trial (one)


@dataclass(frozen=True)
class StudyView:
    name: str
    objectives: list[str]
    directions: list[str]  # minimize or maximize, per objective
    best: list[float | None]  # each objective's best value over the complete trials
    trials: list[TrialView]
    registered: str | None  # the version registered from the chosen trial

    @property
    def complete(self) -> int:
        return sum(1 for t in self.trials if t.state == "complete")

    @property
    def params(self) -> list[str]:
        return sorted({p for t in self.trials for p in t.params})


def _objectives(study: optuna.Study) -> list[str]:
    """The searched metrics, or Optuna's names for a study made elsewhere."""
    search = study.user_attrs.get(SEARCH_ATTR)
    if search:
        return [objective["metric"] for objective in search["objectives"]]
    return study.metric_names or [f"objective {i + 1}" for i in range(len(study.directions))]


def study_view(stack: StackSettings, name: str) -> StudyView:
    """The study `name` with its trials (NOT_FOUND when there is none)."""
    study = open_study(stack, name)
    directions = [d.name.lower() for d in study.directions]
    trials = study.get_trials(deepcopy=False)
    best = {t.number for t in study.best_trials}
    complete = [t.values for t in trials if t.state is TrialState.COMPLETE]
    return StudyView(
        name=name,
        objectives=_objectives(study),
        directions=directions,
        best=[
            (max if direction == "maximize" else min)(v[i] for v in complete) if complete else None
            for i, direction in enumerate(directions)
        ],
        trials=[
            TrialView(
                t.number,
                t.state.name.lower(),
                list(t.values) if t.values else [None] * len(directions),
                t.params,
                t.user_attrs.get(JOB_ATTR, ""),
                t.number in best,
            )
            for t in trials
        ],
        registered=study.user_attrs.get(REGISTERED_ATTR),
    )


def study_views(stack: StackSettings) -> list[StudyView]:
    """Every study in the stack's database, by name."""
    return [
        study_view(stack, name) for name in sorted(optuna.get_all_study_names(study_storage(stack)))
    ]
