"""Jobs end to end: real worker processes, state in SQLite and PostgreSQL, SIGKILL recovery;
jobs on leases (core.leases): stale workers fenced, SIGTERM requeues from a checkpoint, each
key's share of the running slots, each job's budget of steps and time."""

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from sqlalchemy.exc import OperationalError

from core.leases import Lease, LeaseLost
from core.settings import StackSettings
from finetune.errors import RecipeError
from finetune.jobs import Job, JobStatus
from finetune.runner import JobRunner, process_alive, process_start, worker_command
from finetune.settings import FinetuneSettings
from finetune.worker import StopRequest, Why, _heartbeat, run_job
from registry.entities import VersionKind
from registry.service import Registry, open_registry
from tests.finetune.test_training import recipe_for
from tests.serving.conftest import running_gateway


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> StackSettings:
    return StackSettings(home=tmp_path / "home", database_url=database_url, actor="tester")


@pytest.fixture
def registry(settings: StackSettings, base_model_dir: Path) -> Registry:
    registry = open_registry(settings)
    registry.register("demo", base_model_dir)
    registry.set_alias("demo", "production", 1)
    return registry


@pytest.fixture
def runner(settings: StackSettings, registry: Registry) -> JobRunner:
    return JobRunner.open(settings, FinetuneSettings(heartbeat_s=0.2, stale_after_s=30))


def wait_for(runner: JobRunner, job_id: str, done, timeout: float = 240) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = runner.get(job_id)
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job stuck: {job}"
        time.sleep(0.2)


def finished(job: Job) -> bool:
    return job.status.finished


@pytest.mark.slow
def test_submitted_job_trains_in_its_own_process_and_registers_with_lineage(
    runner: JobRunner, registry: Registry, skills_dir: Path
) -> None:
    recipe = recipe_for("demo", skills_dir, suffix="rev", set_staging_alias=True)
    job = runner.submit(recipe)
    assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    job = wait_for(runner, job.id, finished)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.pid != os.getpid() and job.attempts == 1
    assert job.fine_tuned_model == f"ft:demo:rev:{job.id}"

    version = registry.resolve(job.fine_tuned_model)
    assert version.ref == job.registered_version == "demo-rev:1"
    assert (version.kind, version.parent, version.format) == (
        VersionKind.ADAPTER,
        "demo:1",
        "peft-lora",
    )
    assert version.recipe_digest.startswith("sha256:") and len(version.dataset_digests) == 2
    assert {"train_loss", "eval_loss", "train_tokens"} <= version.metrics.keys()
    files = {entry.path for entry in registry.verify(version.ref).files}
    assert {"adapter_model.safetensors", "loss_curve.png", "log_history.json"} <= files
    assert registry.resolve("demo-rev@staging") == version

    messages = [e.message for e in reversed(runner.store.list_events(job.id))]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert "Job started" in messages
    assert messages[-1] == "The job has successfully completed"
    assert [c.step for c in runner.store.list_checkpoints(job.id)] == [4, 2]


@pytest.mark.slow
def test_killed_worker_resumes_from_its_checkpoint_after_a_restart(
    runner: JobRunner, registry: Registry, skills_dir: Path
) -> None:
    recipe = recipe_for("demo", skills_dir, max_steps=40, save_steps=2, eval_steps=None)
    job = runner.submit(recipe)
    job = wait_for(runner, job.id, lambda j: bool(runner.store.list_checkpoints(j.id)))
    os.kill(job.pid, signal.SIGKILL)
    wait_for(runner, job.id, lambda j: not process_alive(j.pid))
    assert runner.get(job.id).status is JobStatus.RUNNING  # as the dead worker left it

    # A restart (any runner that opens) notices the dead worker and resumes the job.
    restarted = JobRunner.open(runner.stack, runner.settings)
    [recovered] = restarted.recover()
    assert recovered.status is JobStatus.QUEUED
    restarted.dispatch()
    job = wait_for(restarted, job.id, finished)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2
    messages = [e.message for e in restarted.store.list_events(job.id)]
    assert any(m.startswith("Job resumed from checkpoint-") for m in messages)
    assert registry.resolve(job.fine_tuned_model).ref == job.registered_version


def test_a_job_killed_before_any_checkpoint_fails_with_a_reason(
    runner: JobRunner, skills_dir: Path
) -> None:
    job = runner.create(recipe_for("demo", skills_dir))
    worker = _claim_as_dead_worker(runner, job)
    [recovered] = runner.recover()
    assert recovered.status is JobStatus.FAILED
    assert recovered.error["code"] == "worker_died"
    assert f"worker {worker} on" in recovered.error["message"]
    assert "died before the first checkpoint" in recovered.error["message"]
    assert runner.recover() == []  # nothing left running


def _claim_as_dead_worker(runner: JobRunner, job: Job) -> int:
    """Mark `job` running, with a lease that has not run out, for a process of this host that
    has already exited."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    host = socket.gethostname()
    claimed = runner.store.claim(
        job.id, "dead", timedelta(hours=1), pid=pid, host=host, pid_start=None
    )
    assert claimed is not None
    return pid


def test_recovery_never_declares_a_live_worker_dead(runner: JobRunner, skills_dir: Path) -> None:
    """A worker of this host whose lease ran out (its renewals failed while the database
    restarted, say) still runs; a process that got a dead worker's pid later is not that
    worker."""
    job = runner.create(recipe_for("demo", skills_dir))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_start(sleeper.pid)
        host = socket.gethostname()
        runner.store.claim(
            job.id, "sleeper", timedelta(seconds=-1), pid=sleeper.pid, host=host, pid_start=started
        )
        assert runner.recover() == [] and runner.get(job.id).status is JobStatus.RUNNING
        runner.store.update(job.id, pid_start=started - 1)  # the pid, but another process
        [recovered] = runner.recover()
        assert recovered.status is JobStatus.FAILED and "worker_died" in str(recovered.error)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lease_renewal_that_fails_keeps_renewing(
    runner: JobRunner, skills_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = runner.create(recipe_for("demo", skills_dir))
    _, lease = runner.store.claim(
        job.id, "me", timedelta(seconds=30), pid=os.getpid(), host="here", pid_start=None
    )
    real, calls = runner.store.renew, []

    def flaky(lease: Lease, ttl: timedelta) -> Lease:
        calls.append(lease)
        if len(calls) <= 2:
            raise OperationalError("UPDATE", {}, Exception("the database went away"))
        return real(lease, ttl)

    monkeypatch.setattr(runner.store, "renew", flaky)
    settings = FinetuneSettings(heartbeat_s=0.05, stale_after_s=30)
    stop, done = StopRequest(), threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(runner.store, lease, settings, 60.0, stop, done)
    )
    beat.start()
    deadline = time.monotonic() + 10
    while len(calls) < 4:
        assert time.monotonic() < deadline and beat.is_alive()
        time.sleep(0.02)
    done.set()
    beat.join()
    assert not stop.is_set()
    assert runner.get(job.id).lease_until > lease.until


def test_cancel_a_queued_job_and_refuse_to_cancel_a_finished_one(
    runner: JobRunner, skills_dir: Path
) -> None:
    job = runner.create(recipe_for("demo", skills_dir))
    cancelled = runner.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.finished_at is not None
    assert runner.dispatch() == []
    with pytest.raises(Exception, match="already cancelled; only queued or running"):
        runner.cancel(job.id)
    with pytest.raises(Exception, match="no fine-tuning job 'ftjob-nope'"):
        runner.get("ftjob-nope")


@pytest.mark.slow
def test_cancel_stops_a_running_worker(runner: JobRunner, skills_dir: Path) -> None:
    job = runner.submit(recipe_for("demo", skills_dir, max_steps=400, save_steps=100))
    job = wait_for(runner, job.id, lambda j: j.status is JobStatus.RUNNING and j.pid)
    wait_for(
        runner, job.id, lambda j: any("Step" in e.message for e in runner.store.list_events(j.id))
    )
    assert runner.cancel(job.id).status is JobStatus.CANCELLED
    wait_for(runner, job.id, lambda j: not process_alive(j.pid), timeout=60)
    job = runner.get(job.id)
    assert job.status is JobStatus.CANCELLED and job.registered_version is None


# Recipes naming deepspeed are refused without the package (tests/finetune/test_recipe.py).
NEEDS_DEEPSPEED = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"
)


@pytest.mark.parametrize(
    ("strategy", "kind"),
    [
        ("ddp", "MULTI_GPU"),
        ("fsdp", "FSDP"),
        pytest.param("deepspeed-zero2", "DEEPSPEED", marks=NEEDS_DEEPSPEED),
        pytest.param("deepspeed-zero3", "DEEPSPEED", marks=NEEDS_DEEPSPEED),
    ],
)
def test_the_command_line_for_several_gpus_is_accelerate_launch_with_the_recipes_config(
    runner: JobRunner, skills_dir: Path, monkeypatch: pytest.MonkeyPatch, strategy: str, kind: str
) -> None:
    job = runner.create(recipe_for("demo", skills_dir, distributed=strategy))
    assert worker_command(job) == [sys.executable, "-m", "finetune.worker", job.id]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    command = worker_command(job)
    config = command[command.index("--config_file") + 1]
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[-5:] == ["--num_processes", "4", "-m", "finetune.worker", job.id]
    assert load_config_from_file(config).distributed_type.name == kind


def test_rows_over_sequence_len_fail_the_job_with_their_line(
    runner: JobRunner, skills_dir: Path
) -> None:
    job = runner.create(recipe_for("demo", skills_dir, sequence_len=8))
    job = run_job(runner, job.id)
    assert job.status is JobStatus.FAILED
    assert job.error["code"] == "invalid_training_file" and job.error["param"] == "training_file"
    assert (
        "train.jsonl:1: " in job.error["message"] and "over sequence_len 8" in job.error["message"]
    )
    assert runner.store.list_events(job.id)[0].message.startswith("The job failed: ")


def test_resume_point_is_the_newest_recorded_checkpoint_still_on_disk(
    runner: JobRunner, skills_dir: Path
) -> None:
    job = runner.create(recipe_for("demo", skills_dir))
    folder = runner.job_dir(job) / "checkpoints"
    for step in (2, 4, 6):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
    for step in (2, 4):  # checkpoint-6 was being written when the worker died: not recorded
        path = folder / f"checkpoint-{step}"
        runner.store.add_checkpoint(
            job.id, step, str(path.relative_to(runner.stack.resolved_home)), {}
        )
    assert runner.resume_point(job) == folder / "checkpoint-4"
    (folder / "checkpoint-4").rmdir()  # rotated away
    assert runner.resume_point(job) == folder / "checkpoint-2"


def test_the_gateway_recovers_jobs_while_it_runs(
    tmp_path: Path, base_model_dir: Path, skills_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed (by the OOM killer, say) while the gateway runs does not stall the
    queue until the next restart."""
    monkeypatch.setenv("LLMOPS_FINETUNE_RECOVER_EVERY_S", "0.2")
    with running_gateway(tmp_path / "home", base_model_dir) as gw:
        runner = gw.gateway.jobs
        job = runner.create(recipe_for("demo", skills_dir))
        _claim_as_dead_worker(runner, job)
        recovered = wait_for(runner, job.id, lambda j: j.status is JobStatus.FAILED, timeout=30)
        assert recovered.error["code"] == "worker_died"


@pytest.mark.slow
def test_a_job_trains_data_parallel_in_two_cpu_processes(
    tmp_path: Path, base_model_dir: Path, skills_dir: Path
) -> None:
    """DDP for real, over gloo: two worker processes each train on their share of every
    step, so the same number of steps sees twice the data of one process."""
    settings = StackSettings(home=tmp_path / "home", actor="tester")
    registry = open_registry(settings)
    registry.register("demo", base_model_dir)
    registry.set_alias("demo", "production", 1)
    runner = JobRunner.open(settings)
    jobs = {}
    for processes in (1, 2):
        recipe = recipe_for("demo", skills_dir, num_processes=processes, eval_steps=None)
        job = runner.submit(recipe.model_copy(update={"datasets": recipe.datasets[:1]}))
        jobs[processes] = wait_for(runner, job.id, lambda j: j.status.finished, timeout=300)
        assert jobs[processes].status is JobStatus.SUCCEEDED, jobs[processes].error
    assert worker_command(jobs[2])[1:3] == ["-m", "torch.distributed.run"]
    single, double = (jobs[n].trained_tokens for n in (1, 2))
    assert 1.6 * single < double < 2.4 * single
    assert registry.resolve(jobs[2].fine_tuned_model).kind is VersionKind.ADAPTER


# -- leases, stops and budgets ------------------------------------------------------------

LONG = timedelta(hours=1)


def _claim(runner: JobRunner, job: Job, owner: str, ttl: timedelta = LONG):
    """`owner`, a worker on another host, leases `job` and marks it running."""
    claimed = runner.store.claim(job.id, owner, ttl, pid=1, host=f"{owner}-host", pid_start=None)
    assert claimed is not None
    return claimed[1]


def test_a_worker_whose_job_was_taken_over_cannot_write_its_result(
    runner: JobRunner, skills_dir: Path
) -> None:
    job = runner.create(recipe_for("demo", skills_dir))
    stale = _claim(runner, job, "worker-a", ttl=timedelta(seconds=-1))  # its lease ran out
    checkpoint = runner.job_dir(job) / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    home = runner.stack.resolved_home
    runner.store.under(stale).add_checkpoint(job.id, 2, str(checkpoint.relative_to(home)), {})

    # Another host's runner sees the lease ran out: the job goes back to the queue, and a
    # new worker takes it.
    [recovered] = runner.recover()
    assert recovered.status is JobStatus.QUEUED
    fresh = _claim(runner, job, "worker-b")
    assert fresh.epoch > stale.epoch

    # The stale worker wakes up: its renewal, checkpoints, events and result are refused.
    with pytest.raises(LeaseLost):
        runner.store.renew(stale, LONG)
    with pytest.raises(LeaseLost):
        runner.store.under(stale).add_checkpoint(job.id, 4, "jobs/stale/checkpoint-4", {})
    with pytest.raises(LeaseLost):
        runner.store.under(stale).add_event(job.id, "Step 4/4 from the stale worker")
    assert not runner.store.transition(
        job.id,
        (JobStatus.RUNNING,),
        JobStatus.SUCCEEDED,
        lease=stale,
        registered_version="demo-stale:1",
    )
    stop, done = StopRequest(), threading.Event()
    beat = threading.Thread(
        target=_heartbeat,
        args=(runner.store, stale, FinetuneSettings(heartbeat_s=0.01), 60.0, stop, done),
    )
    beat.start()
    beat.join(timeout=10)
    assert stop.why is Why.LEASE_LOST and not beat.is_alive()

    # The new holder's writes go through, and its result stands.
    runner.store.under(fresh).add_checkpoint(job.id, 4, "jobs/fresh/checkpoint-4", {})
    assert runner.store.transition(
        job.id,
        (JobStatus.RUNNING,),
        JobStatus.SUCCEEDED,
        lease=fresh,
        registered_version="demo-fresh:1",
    )
    assert not runner.store.transition(
        job.id, (JobStatus.RUNNING,), JobStatus.FAILED, lease=stale, error={"code": "x"}
    )
    job = runner.get(job.id)
    assert job.status is JobStatus.SUCCEEDED and job.registered_version == "demo-fresh:1"
    assert job.lease_owner is None  # a finished job holds no lease
    newest = runner.store.list_checkpoints(job.id)[0]
    assert newest.path == "jobs/fresh/checkpoint-4"
    assert not any("stale worker" in e.message for e in runner.store.list_events(job.id))


def test_recovery_leaves_a_job_whose_lease_is_live_on_another_host(
    runner: JobRunner, skills_dir: Path
) -> None:
    job = runner.create(recipe_for("demo", skills_dir))
    _claim(runner, job, "worker-a")
    assert runner.recover() == []
    assert runner.get(job.id).status is JobStatus.RUNNING


def test_cancel_takes_the_lease_so_the_worker_stops_writing(
    runner: JobRunner, skills_dir: Path
) -> None:
    job = runner.create(recipe_for("demo", skills_dir))
    lease = _claim(runner, job, "worker-a")
    runner.cancel(job.id)
    with pytest.raises(LeaseLost):
        runner.store.renew(lease, LONG)
    with pytest.raises(LeaseLost):
        runner.store.under(lease).add_checkpoint(job.id, 2, "jobs/x/checkpoint-2", {})
    assert runner.get(job.id).status is JobStatus.CANCELLED


def _step(message: str) -> int | None:
    found = re.match(r"Step (\d+)/", message)
    return int(found.group(1)) if found else None


@pytest.mark.slow
def test_sigterm_requeues_the_job_from_a_checkpoint_and_the_next_worker_resumes_there(
    runner: JobRunner, registry: Registry, skills_dir: Path
) -> None:
    """`systemctl stop` loses no work: the worker checkpoints at the next step, gives its job
    back to the queue, and the next worker goes on from that step."""
    recipe = recipe_for("demo", skills_dir, max_steps=30, save_steps=1000, eval_steps=None)
    job = runner.submit(recipe.model_copy(update={"datasets": recipe.datasets[:1]}))
    try:
        _stop_and_resume(runner, registry, job.id)
    finally:  # a worker left behind stops at its next renewal
        if not runner.get(job.id).status.finished:
            runner.cancel(job.id)


def _stop_and_resume(runner: JobRunner, registry: Registry, job_id: str) -> None:
    job = wait_for(
        runner,
        job_id,
        lambda j: any((_step(e.message) or 0) >= 10 for e in runner.store.list_events(j.id)),
    )
    os.kill(job.pid, signal.SIGTERM)
    wait_for(runner, job.id, lambda j: not process_alive(j.pid), timeout=60)

    job = runner.get(job.id)
    assert job.status is JobStatus.QUEUED and job.lease_owner is None
    [checkpoint] = runner.store.list_checkpoints(job.id)
    assert 10 <= checkpoint.step < 30
    assert runner.resume_point(job).name == f"checkpoint-{checkpoint.step}"
    [requeued] = [e for e in runner.store.list_events(job.id) if "SIGTERM" in e.message]
    assert requeued.message == (
        "The worker was stopped (SIGTERM); the job is queued again and will resume from "
        f"checkpoint-{checkpoint.step}"
    )

    runner.dispatch()
    job = wait_for(runner, job.id, lambda j: j.status.finished)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2 and job.metrics["steps"] == 30
    messages = [e.message for e in reversed(runner.store.list_events(job.id))]
    resumed = messages.index(f"Job resumed from checkpoint-{checkpoint.step} (attempt 2)")
    steps_after = [s for m in messages[resumed:] if (s := _step(m)) is not None]
    assert steps_after and steps_after[0] > checkpoint.step  # not from step 0 again
    assert registry.resolve(job.fine_tuned_model).ref == job.registered_version


def test_the_running_slots_are_shared_among_the_keys_that_wait(
    runner: JobRunner, skills_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner.settings = FinetuneSettings(max_running_jobs=4)
    started: list[Job] = []
    monkeypatch.setattr(runner, "spawn", started.append)
    recipe = recipe_for("demo", skills_dir)
    a = [runner.create(recipe, owner="key-a") for _ in range(6)]
    b = [runner.create(recipe, owner="key-b") for _ in range(2)]

    # Four free slots, key-a queued first: key-b still gets its share.
    runner.dispatch()
    assert sorted(j.id for j in started) == sorted([a[0].id, a[1].id, b[0].id, b[1].id])

    # Those run; one of key-b's ends: the slot goes to key-b again, the key running fewest,
    # though key-a's jobs have waited longer.
    for job in started:
        _claim(runner, job, f"worker-{job.id}")
    runner.cancel(b[0].id)
    b.append(runner.create(recipe, owner="key-b"))
    started.clear()
    runner.dispatch()
    assert [j.id for j in started] == [b[2].id]

    # With no other key waiting, one key may take every free slot.
    _claim(runner, b[2], "worker-b2")
    for job in b[1:]:
        runner.cancel(job.id)
    started.clear()
    runner.dispatch()
    assert [j.id for j in started] == [a[2].id, a[3].id]


def test_a_job_over_the_step_budget_is_refused_when_submitted(
    runner: JobRunner, skills_dir: Path
) -> None:
    runner.settings = FinetuneSettings(max_steps_per_job=20)
    with pytest.raises(RecipeError) as refused:
        runner.submit(recipe_for("demo", skills_dir, max_steps=21))
    assert refused.value.param == "max_steps"
    assert refused.value.message.startswith(
        "the job would train 21 optimizer steps, over the budget of 20 steps per job;"
    )
    # 64 rows in batches of 8: 8 steps an epoch.
    epochs = {"max_steps": None, "num_epochs": 3}
    with pytest.raises(RecipeError, match="would train 24 optimizer steps") as refused:
        runner.submit(recipe_for("demo", skills_dir, **epochs))
    assert refused.value.param == "num_epochs"
    assert runner.store.list_jobs() == []
    assert runner.create(recipe_for("demo", skills_dir, max_steps=20)).status is JobStatus.QUEUED


def test_a_job_past_its_wall_time_fails_with_the_reason(
    runner: JobRunner, skills_dir: Path
) -> None:
    runner.settings = FinetuneSettings(max_job_seconds=2.0, heartbeat_s=0.1)
    job = runner.create(recipe_for("demo", skills_dir, max_steps=100_000, save_steps=1000))
    job = run_job(runner, job.id)
    assert job.status is JobStatus.FAILED and job.error["code"] == "time_limit_exceeded"
    assert re.fullmatch(
        r"the job trained for \d+ s, over the budget of 2 s per job; submit it again with "
        r"fewer steps \(a smaller max_steps or fewer epochs\)",
        job.error["message"],
    )
    assert 2.0 <= job.run_seconds < 60 and job.registered_version is None
