"""Running a study: queue its missing trials as `tune-trial` jobs, wait while workers (here, or
on other machines sharing the database) run them, then register the trial the search selects.

Running a search again resumes its study: finished trials count, trials whose job failed or
was cancelled are marked failed in the study, and only the missing ones are queued."""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.errors import ErrorCode
from finetune.automl.search import DistillSearch, RecipeSearch, embed_recipe
from finetune.automl.storage import create_study
from finetune.automl.trial import DIGESTS_ATTR, JOB_ATTR, METRICS_ATTR, OUTPUT_ATTR, RECIPE_ATTR
from finetune.errors import FinetuneError
from finetune.jobs import Job, JobStatus
from finetune.kinds import TUNE_TRIAL
from finetune.registration import register_adapter
from finetune.runner import JobRunner
from finetune.trainer import TrainResult, resolve_base
from registry.entities import FINE_TUNED_TAG, ModelVersion
from registry.service import Registry

log = logging.getLogger(__name__)

STUDY_TAG = "automl_study"
TRIAL_TAG = "automl_trial"
REGISTERED_ATTR = "registered_version"
CHOSEN_ATTR = "chosen_trial"
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class StudyRun:
    study: optuna.Study
    search: RecipeSearch
    jobs: list[Job]
    chosen: FrozenTrial | None
    registered: ModelVersion | None


def pin_base(search: RecipeSearch, registry: Registry) -> RecipeSearch:
    """The search with its base model pinned (a registry reference to the version it resolves
    to now, a folder to its absolute path), so every trial trains on the same weights."""
    model = search.model()
    folder = Path(model).expanduser()
    base = str(folder.resolve()) if folder.is_dir() else registry.resolve(model).ref
    return embed_recipe(search, search.trial_recipe().model_copy(update={search.MODEL_KEY: base}))


def trial_jobs(runner: JobRunner, study: str) -> list[Job]:
    """The study's trial jobs, oldest first."""
    jobs = runner.store.list_jobs()
    return [j for j in reversed(jobs) if j.kind == TUNE_TRIAL and j.recipe.get("study") == study]


def reconcile(runner: JobRunner, study: optuna.Study) -> None:
    """Mark failed the running trials whose job failed or was cancelled (a worker that died for
    good, a cancelled job): nobody will tell the study about them."""
    ended = {
        j.id
        for j in trial_jobs(runner, study.study_name)
        if j.status in (JobStatus.FAILED, JobStatus.CANCELLED)
    }
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(JOB_ATTR) in ended:
            study.tell(trial.number, state=TrialState.FAIL)


def queue_trials(
    runner: JobRunner, study: optuna.Study, search: RecipeSearch, at_most: int | None = None
) -> list[Job]:
    """Queue trial jobs (`at_most` of them) until finished and active trials make
    `search.trials`; the new jobs."""
    reconcile(runner, study)
    finished = len(study.get_trials(deepcopy=False, states=_COUNTED))
    active = [j for j in trial_jobs(runner, search.study) if not j.status.finished]
    model = search.model()
    missing = search.trials - finished - len(active)
    return [
        runner.store.create(
            kind=TUNE_TRIAL,
            model=model,
            recipe={"study": search.study},
            created_by=runner.stack.actor,
        )
        for _ in range(missing if at_most is None else min(missing, at_most))
    ]


def wait_for_trials(
    runner: JobRunner, study: str, poll_s: float = 1.0, respawn_after_s: float = 300.0
) -> list[Job]:
    """Wait until none of the study's trial jobs is queued or running, starting workers for
    queued jobs and again for jobs whose worker died. Workers are started only once every
    worker started before has claimed its job (a worker takes a while to start, and a second
    one for the same job would only exit again), or after `respawn_after_s` without a claim
    (a worker that failed to start)."""
    spawned: set[str] = set()
    started = -math.inf
    while True:
        jobs = trial_jobs(runner, study)
        if all(j.status.finished for j in jobs):
            return jobs
        spawned -= {j.id for j in runner.recover()}
        unclaimed = spawned & {j.id for j in jobs if j.status is JobStatus.QUEUED}
        if not unclaimed or time.monotonic() - started >= respawn_after_s:
            spawned |= set(runner.dispatch())
            started = time.monotonic()
        time.sleep(poll_s)


def _within(trial: FrozenTrial, search: RecipeSearch) -> bool:
    metrics = trial.user_attrs.get(METRICS_ATTR, {})
    for metric, bound in search.select.where.items():
        value = metrics.get(metric, math.nan)
        if math.isnan(value):
            return False
        if (bound.min is not None and value < bound.min) or (
            bound.max is not None and value > bound.max
        ):
            return False
    return True


def choose(study: optuna.Study, search: RecipeSearch) -> FrozenTrial | None:
    """The complete trial within `select.where` that is best on `select.by` (default: the
    first objective), ties going to the other objectives in order; with several objectives
    that trial is on the Pareto front of those within the limits."""
    feasible = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if _within(t, search)
    ]
    if not feasible:
        return None
    by = search.select.by or search.metrics[0]
    order = [by, *(m for m in search.metrics if m != by)]
    signs = {o.metric: (-1 if o.goal == "maximize" else 1) for o in search.objectives}
    return min(
        feasible, key=lambda t: [signs[m] * t.values[search.metrics.index(m)] for m in order]
    )


def register_trial(
    runner: JobRunner,
    registry: Registry,
    study: optuna.Study,
    search: RecipeSearch,
    trial: FrozenTrial,
) -> ModelVersion:
    """Register the trial's adapter or student (once) with its study and trial in its tags."""
    attrs = trial.user_attrs
    recipe = search.parse_recipe(attrs[RECIPE_ATTR], f"trial {trial.number} recipe")
    output_dir = runner.stack.resolved_home / attrs[OUTPUT_ATTR]
    if not output_dir.is_dir():
        raise FinetuneError(
            ErrorCode.NOT_FOUND,
            f"trial {trial.number}'s result is not on this machine; register it where its job "
            f"{attrs[JOB_ATTR]} ran (llm-finetune tune run there)",
        )
    tags = {STUDY_TAG: study.study_name, TRIAL_TAG: str(trial.number)}
    metrics, digests = attrs[METRICS_ATTR], attrs[DIGESTS_ATTR]
    if isinstance(search, DistillSearch):
        from finetune.distill.job import Distilled, register_distilled
        from finetune.source_model import resolve_source

        teacher = resolve_source(recipe.teacher_model, registry, "teacher_model")
        student = Distilled(output_dir, teacher, metrics, digests)
        version = register_distilled(registry, student, recipe, attrs[JOB_ATTR], None, tags)
    else:
        result = TrainResult(
            output_dir, resolve_base(recipe.base_model, registry), metrics, digests
        )
        version = register_adapter(registry, result, recipe, attrs[JOB_ATTR], None, tags)
    runner.store.update(
        attrs[JOB_ATTR],
        registered_version=version.ref,
        fine_tuned_model=version.tags.get(FINE_TUNED_TAG),
    )
    study.set_user_attr(REGISTERED_ATTR, version.ref)
    study.set_user_attr(CHOSEN_ATTR, trial.number)
    return version


def run_study(
    runner: JobRunner, registry: Registry, search: RecipeSearch, *, here: bool = False
) -> StudyRun:
    """Create or resume the search's study, run its missing trials, register the choice.

    `here` runs the trials one after another in this process (like `llm-finetune run`);
    otherwise they are queued for worker processes and this waits for them."""
    from finetune.worker import run_job

    search = pin_base(search, registry)
    study = create_study(runner.stack, search)
    if here:
        for _ in range(search.trials):  # bounded: a failing trial is not retried forever
            for job in queue_trials(runner, study, search, at_most=1):
                run_job(runner, job.id)
    else:
        queue_trials(runner, study, search)
        wait_for_trials(runner, search.study)
    reconcile(runner, study)
    chosen = choose(study, search)
    registered = None
    if chosen is not None and search.register_chosen:
        registered = register_trial(runner, registry, study, search, chosen)
    return StudyRun(study, search, trial_jobs(runner, search.study), chosen, registered)
