"""Studies whose trials are jobs: pruning, registration, Pareto fronts, plots, a killed
worker, and two workers sharing one study on PostgreSQL."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from core.settings import StackSettings
from finetune.automl.search import parse_search
from finetune.automl.storage import create_study, load_study
from finetune.automl.study import (
    STUDY_TAG,
    TRIAL_TAG,
    queue_trials,
    run_study,
    trial_jobs,
    wait_for_trials,
)
from finetune.cli import main
from finetune.jobs import JobStatus
from finetune.kinds import TUNE_TRIAL
from finetune.runner import JobRunner
from finetune.settings import FinetuneSettings
from registry.entities import VersionKind
from registry.service import open_registry
from tests.finetune.automl.conftest import search_data, write_search


def _runner(home: Path, url: str | None = None, parallel: int = 1) -> JobRunner:
    stack = StackSettings(home=home, actor="tests", database_url=url)
    return JobRunner.open(stack, FinetuneSettings(max_running_jobs=parallel, heartbeat_s=0.5))


@pytest.mark.slow
def test_a_pruned_study_registers_its_best_trial_and_shows_its_plots(
    home: Path,
    skills_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    # Two good learning rates first, then one too small to learn: the median pruner stops it
    # at its first intermediate evaluation, worse than both earlier trials at that step.
    data = search_data(
        skills_dir,
        trials=3,
        pruner={"type": "median", "n_startup_trials": 2},
        enqueue=[{"learning_rate": 2e-2}, {"learning_rate": 1e-2}, {"learning_rate": 1e-6}],
    )
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    monkeypatch.delenv("LLMOPS_DATABASE_URL", raising=False)
    search_file = write_search(tmp_path / "tiny.yaml", data)
    assert main(["--json", "tune", "run", str(search_file), "--here"]) == 0
    summary = json.loads(capsys.readouterr().out)
    runner = _runner(home)
    registry = open_registry(runner.stack)
    study, _ = load_study(runner.stack, "tiny")

    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
    assert summary["trials"] == {"complete": 2, "pruned": 1, "fail": 0, "running": 0}
    assert trials[2].user_attrs["metrics"]["steps"] == 2  # of 4
    assert all(t.user_attrs["metrics"]["steps"] == 4 for t in trials[:2])
    jobs = trial_jobs(runner, "tiny")
    assert [j.kind for j in jobs] == [TUNE_TRIAL] * 3
    assert all(j.status is JobStatus.SUCCEEDED for j in jobs)

    best = min(trials[:2], key=lambda t: t.values[0])
    assert summary["chosen_trial"] == best.number
    version = registry.resolve(summary["registered_version"])
    assert version.tags[STUDY_TAG] == "tiny" and version.tags[TRIAL_TAG] == str(best.number)
    assert version.parent == "demo:1"
    assert version.metrics["eval_loss"] == pytest.approx(best.values[0])
    assert [v.ref for v in registry.lineage(version)] == ["demo:1"]

    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(j.id in listed for j in jobs)
    assert main(["tune", "show", "tiny", "--out", str(tmp_path / "plots")]) == 0
    shown = capsys.readouterr().out
    assert "pruned" in shown and f"registered: {version.ref}" in shown
    for name in ("history.png", "importances.png"):
        assert (tmp_path / "plots" / name).read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_several_objectives_give_a_pareto_front(
    home: Path, skills_dir: Path, tmp_path: Path
) -> None:
    data = search_data(
        skills_dir,
        study="pareto",
        trials=3,
        objectives=["eval_loss", "trainable_params"],
        space={"lora_r": {"choices": [1, 4, 16]}, "learning_rate": {"choices": [1e-2, 1e-5]}},
        enqueue=[{"lora_r": 1, "learning_rate": 1e-2}, {"lora_r": 16, "learning_rate": 1e-2}],
        select={"by": "eval_loss", "where": {"trainable_params": {"max": 5000}}},
    )
    data["recipe"]["max_steps"] = 2
    runner = _runner(home)
    outcome = run_study(runner, open_registry(runner.stack), parse_search(data), here=True)

    complete = outcome.study.get_trials(states=(TrialState.COMPLETE,))
    front = outcome.study.best_trials
    assert front and len(complete) == 3
    for trial in front:  # no trial is at least as good on both and better on one
        assert not any(
            all(o <= t for o, t in zip(other.values, trial.values, strict=True))
            and other.values != trial.values
            for other in complete
        )
    params = {t.number: t.values[1] for t in complete}
    assert params[0] < params[1]  # rank 1 trains fewer parameters than rank 16
    assert outcome.chosen.values[1] <= 5000
    from finetune.automl.report import write_plots

    plots = write_plots(outcome.study, outcome.search, tmp_path / "plots")
    assert tmp_path / "plots" / "pareto.png" in plots


def test_a_student_search_distils_each_shape_and_registers_the_chosen_student(
    home: Path, skills_dir: Path
) -> None:
    data = search_data(
        skills_dir,
        kind="distill",
        study="students",
        objectives=["eval_loss", "trainable_params"],
        space={"student.hidden_size": {"choices": [16, 32]}, "kd_alpha": {"low": 0.3, "high": 0.7}},
        enqueue=[{"student.hidden_size": 16}, {"student.hidden_size": 32}],
        select={"by": "eval_loss", "where": {"trainable_params": {"max": 40_000}}},
    )
    student = {"num_layers": 1, "num_heads": 1, "intermediate_size": 64}
    data["recipe"] = {
        **{k: v for k, v in data["recipe"].items() if not k.startswith(("base_model", "lora"))},
        "method": "distill",
        "teacher_model": "demo",
        "student": student,
    }
    runner = _runner(home)
    registry = open_registry(runner.stack)
    outcome = run_study(runner, registry, parse_search(data), here=True)

    complete = outcome.study.get_trials(states=(TrialState.COMPLETE,))
    sizes = {t.params["student.hidden_size"]: t.user_attrs["metrics"] for t in complete}
    assert sizes[16]["trainable_params"] < sizes[32]["trainable_params"]
    assert all(m["parameter_ratio"] < 1 for m in sizes.values())  # students of the teacher
    chosen = outcome.chosen
    assert chosen is not None and chosen.user_attrs["metrics"]["trainable_params"] <= 40_000
    version = outcome.registered
    assert version is not None and version.kind is VersionKind.DISTILLED
    assert version.parent == "demo:1" and version.tags[TRIAL_TAG] == str(chosen.number)
    assert version.tags["hidden_size"] == str(chosen.params["student.hidden_size"])
    assert version.metrics["num_parameters"] == chosen.user_attrs["metrics"]["trainable_params"]


@pytest.mark.slow
def test_a_trial_whose_worker_is_killed_resumes_and_finishes(home: Path, skills_dir: Path) -> None:
    data = search_data(skills_dir, study="killed", trials=1)
    data["recipe"].update(max_steps=60, save_steps=2)
    runner = _runner(home)
    search = parse_search(data)
    study = create_study(runner.stack, search)
    (job,) = queue_trials(runner, study, search)
    runner.dispatch()
    deadline = time.monotonic() + 120
    while not runner.store.list_checkpoints(job.id):
        assert time.monotonic() < deadline, runner.get(job.id)
        time.sleep(0.2)
    killed = runner.get(job.id)
    assert killed.status is JobStatus.RUNNING
    os.kill(killed.pid, signal.SIGKILL)
    while runner.recover() == []:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert runner.get(job.id).status is JobStatus.QUEUED

    (ended,) = wait_for_trials(runner, "killed", poll_s=0.3)
    assert ended.status is JobStatus.SUCCEEDED and ended.attempts == 2, ended.error
    (trial,) = study.get_trials()  # the same trial, resumed: not a second one
    assert trial.state is TrialState.COMPLETE and trial.user_attrs["metrics"]["steps"] == 60
    assert killed.pid != ended.pid


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_one_study_on_postgres(
    home: Path, skills_dir: Path, postgres_url: str, base_model_dir: Path
) -> None:
    runner = _runner(home, postgres_url, parallel=2)
    registry = open_registry(runner.stack)
    registry.register("demo", base_model_dir)
    registry.set_alias("demo", "production", 1)
    data = search_data(skills_dir, study="shared", trials=2)
    outcome = run_study(runner, registry, parse_search(data))

    jobs = outcome.jobs
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 2, [j.error for j in jobs]
    assert len({j.pid for j in jobs}) == 2
    # The two workers ran at once: the second process started (its start is recorded in clock
    # ticks after boot) before the first job finished. The first process started before its
    # job's start (its claim), so a gap between the two starts shorter than that job's run
    # proves it, however long either process took to start up. One worker at a time would
    # start the second only after the first job had finished.
    first, second = sorted(jobs, key=lambda j: j.pid_start)
    started_apart_s = (second.pid_start - first.pid_start) / os.sysconf("SC_CLK_TCK")
    assert started_apart_s < (first.finished_at - first.started_at).total_seconds()
    trials = outcome.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert {t.user_attrs["job_id"] for t in trials} == {j.id for j in jobs}
    assert outcome.registered is not None
