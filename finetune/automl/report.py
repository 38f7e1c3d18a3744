"""A study as a table of its trials and as Optuna's plots (PNG): the optimization history,
parameter importances and, with several objectives, the Pareto front."""

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"), so no display is needed
import optuna
from optuna.trial import TrialState
from optuna.visualization import matplotlib as optuna_plots

from finetune.automl.search import RecipeSearch
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
