"""Submitting, starting, cancelling and recovering jobs. Each job trains in its own worker
process (`python -m finetune.worker JOB_ID`); nothing else has to stay up for it to finish.

A worker leases its job (`core.leases`) and renews the lease while it runs; every change it
makes is fenced by the lease, so a worker whose job was taken over writes nothing more. A
worker that finishes starts the next queued job, so a queue drains without a daemon. Any
process that opens a runner (the gateway now and then, each `llm-finetune` command) first
recovers jobs whose worker is gone (its lease ran out, on any host): resumed from their last
checkpoint, or failed with a reason, never left `running`.

While several keys have jobs queued, each gets an equal share of the running slots
(`dispatch`); each job has a budget of steps (checked when it is submitted) and of training
time (its worker fails it past that)."""

import logging
import math
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.database import utc_now
from core.errors import ErrorCode
from core.settings import SHIPPED_CONFIGS, StackSettings
from finetune.errors import FinetuneError, RecipeError, job_not_found
from finetune.jobs import Job, JobStatus, JobStore
from finetune.kinds import FINE_TUNE
from finetune.recipe import Recipe, TrainingKeys
from finetune.settings import FinetuneSettings

log = logging.getLogger(__name__)

ACCELERATE_CONFIGS = SHIPPED_CONFIGS / "accelerate"


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None where there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (None where /proc is missing)."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def process_alive(pid: int, started: int | None = None) -> bool:
    """Whether process `pid` on this host runs (a zombie, exited but not reaped, does not),
    and, with `started`, is the process that started then, not a later one with its pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return True
    return fields[0] != "Z" and (started is None or int(fields[19]) == started)


def worker_gone(job: Job, now: datetime) -> bool:
    """Whether the running job's worker has stopped: its lease ran out (on any host). On the
    worker's own host the process table answers sooner and better: a worker that died is
    recovered at once rather than when its lease runs out, and a live one whose renewals
    failed for a while (the database restarting, say) is left to renew its lease."""
    if job.host == socket.gethostname() and job.pid is not None:
        return not process_alive(job.pid, job.pid_start)
    return job.lease_until is None or job.lease_until < now


def planned_steps(recipe: TrainingKeys) -> int | None:
    """The optimizer steps a recipe asks for: `max_steps`, or its epochs over the rows of its
    training files (an upper bound: one process, no packing); None where that is unknown."""
    if recipe.max_steps is not None:
        return recipe.max_steps
    train = [Path(d.path).expanduser() for d in recipe.datasets if d.split == "train"]
    if getattr(recipe, "sample_packing", False) or not all(path.is_file() for path in train):
        return None
    rows = 0
    for path in train:
        with path.open("rb") as lines:
            rows += sum(1 for line in lines if line.strip())
    batches = math.ceil(rows / recipe.micro_batch_size)
    per_epoch = max(batches // recipe.gradient_accumulation_steps, 1)
    return math.ceil((recipe.num_epochs or 1.0) * per_epoch)


def steps_over_budget(steps: int, budget: int, param: str) -> RecipeError:
    return RecipeError(
        f"the job would train {steps} optimizer steps, over the budget of {budget} steps per "
        "job; lower max_steps or the number of epochs, or train on fewer rows",
        param=param,
    )


def worker_command(job: Job) -> list[str]:
    """`python -m finetune.worker JOB`; on several GPUs, under `accelerate launch` with the
    recipe's distributed config, one process per GPU (or `num_processes`); without GPUs and
    with `num_processes` above 1, that many CPU processes under torchrun (DDP over gloo)."""
    import torch  # here: command lines that never start a worker answer without it

    worker = ["-m", "finetune.worker", job.id]
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    processes = job.recipe.get("num_processes") or max(devices, 1)
    if processes < 2:
        return [sys.executable, *worker]
    if devices < 2:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            *worker,
        ]
    config = ACCELERATE_CONFIGS / f"{job.recipe.get('distributed', 'ddp')}.yaml"
    launch = ["-m", "accelerate.commands.launch", "--config_file", str(config)]
    return [sys.executable, *launch, "--num_processes", str(processes), *worker]


@dataclass
class JobRunner:
    store: JobStore
    stack: StackSettings
    settings: FinetuneSettings

    @classmethod
    def open(
        cls, stack: StackSettings | None = None, settings: FinetuneSettings | None = None
    ) -> "JobRunner":
        stack = stack or StackSettings()
        stack.ensure_home()
        store = JobStore.open(stack.resolved_database_url)
        return cls(store, stack, settings or FinetuneSettings())

    def job_dir(self, job: Job) -> Path:
        output_dir = job.recipe.get("output_dir")
        return Path(output_dir).expanduser() if output_dir else self.stack.jobs_dir / job.id

    def resume_point(self, job: Job) -> Path | None:
        """The job's newest complete checkpoint: one the worker recorded after the Trainer
        finished writing it (a worker killed mid-save leaves a partial folder behind), and
        that checkpoint rotation has not deleted since."""
        for checkpoint in self.store.list_checkpoints(job.id):
            path = self.stack.resolved_home / checkpoint.path
            if path.is_dir():
                return path
        return None

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise job_not_found(job_id)
        return job

    def create(
        self, recipe: Recipe, model: str | None = None, *, kind: str = FINE_TUNE, **fields: Any
    ) -> Job:
        """Record a queued job of `kind` for `recipe` (validated, within the step budget)
        without starting it; `model` is the base as the client named it, when the recipe pins
        the version it resolved to."""
        steps, budget = planned_steps(recipe), self.settings.max_steps_per_job
        if steps is not None and steps > budget:
            param = "max_steps" if recipe.max_steps is not None else "num_epochs"
            raise steps_over_budget(steps, budget, param)
        return self.store.create(
            kind=kind,
            model=model or recipe.base_model,
            recipe=recipe.model_dump(mode="json"),
            created_by=self.stack.actor,
            suffix=recipe.suffix,
            **fields,
        )

    def submit(self, recipe: Recipe, model: str | None = None, **fields: Any) -> Job:
        """Queue a job and start it when a worker slot is free."""
        job = self.create(recipe, model, **fields)
        self.dispatch()
        return self.get(job.id)

    def dispatch(self) -> list[str]:
        """Start workers for queued jobs while fewer than `max_running_jobs` run, sharing the
        slots among keys: each free slot goes to the key with a job queued that runs the
        fewest (the oldest queued job first among equals), so one key holds every slot only
        while no other key waits. Running jobs are not stopped to make room."""
        running = Counter(j.owner for j in self.store.list_jobs(status=JobStatus.RUNNING))
        waiting: dict[str | None, list[Job]] = {}
        for job in reversed(self.store.list_jobs(status=JobStatus.QUEUED)):
            waiting.setdefault(job.owner, []).append(job)
        started = []
        for _ in range(self.settings.max_running_jobs - running.total()):
            if not waiting:
                break
            owner = min(waiting, key=lambda o: (running[o], waiting[o][0].created_at))
            job = waiting[owner].pop(0)
            if not waiting[owner]:
                del waiting[owner]
            running[owner] += 1
            self.spawn(job)
            started.append(job.id)
        return started

    def spawn(self, job: Job) -> subprocess.Popen:
        job_dir = self.job_dir(job)
        job_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.stack.environment()}
        with (job_dir / "train.log").open("ab") as output:
            process = subprocess.Popen(
                worker_command(job),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        # Reap it when it ends, so a finished worker is never mistaken for a live one.
        threading.Thread(target=process.wait, daemon=True).start()
        log.info("job %s: worker %d started", job.id, process.pid)
        return process

    def recover(self) -> list[Job]:
        """Requeue (to resume) or fail every running job whose worker is gone."""
        recovered = []
        now = utc_now()
        for job in self.store.list_jobs(status=JobStatus.RUNNING):
            if not worker_gone(job, now):
                continue
            # Elsewhere only the lease tells: take the job only while it has still run out.
            expired_at = None if job.host == socket.gethostname() else now
            checkpoint = self.resume_point(job)
            where = f"worker {job.pid} on {job.host}"
            if checkpoint is not None and job.attempts < self.settings.max_attempts:
                if self.store.take_back(job, JobStatus.QUEUED, expired_at=expired_at):
                    self.store.add_event(
                        job.id,
                        f"The {where} stopped; the job will resume from {checkpoint.name}",
                        level="warn",
                    )
            else:
                reason = (
                    f"the {where} died before the first checkpoint"
                    if checkpoint is None
                    else f"the {where} died on attempt {job.attempts} of "
                    f"{self.settings.max_attempts}"
                )
                error = {
                    "code": "worker_died",
                    "message": f"{reason}; see llm-finetune logs {job.id}, then resubmit",
                    "param": None,
                }
                if self.store.take_back(job, JobStatus.FAILED, expired_at=expired_at, error=error):
                    self.store.add_event(job.id, error["message"], level="error")
            recovered.append(self.get(job.id))
        return recovered

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job. Its lease goes with it, so a running worker stops
        at its next renewal, on whatever host it runs, and writes nothing more."""
        job = self.get(job_id)
        active = (JobStatus.QUEUED, JobStatus.RUNNING)
        if job.status.finished:
            raise FinetuneError(
                ErrorCode.INVALID,
                f"job {job_id} already {job.status.value}; only queued or running jobs can be "
                "cancelled",
                param="fine_tuning_job_id",
                api_code="invalid_request",
            )
        if self.store.transition(job_id, active, JobStatus.CANCELLED):
            self.store.add_event(job_id, "The job was cancelled")
        return self.get(job_id)
