"""Submitting, starting, cancelling and recovering jobs. Each job trains in its own worker
process (`python -m finetune.worker JOB_ID`); nothing else has to stay up for it to finish.

A worker that finishes starts the next queued job, so a queue drains without a daemon. Any
process that opens a runner (the gateway at start-up, each `llm-finetune` command) first
recovers jobs whose worker died: resumed from their last checkpoint, or failed with a reason,
never left `running`."""

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import ErrorCode
from core.settings import SHIPPED_CONFIGS, StackSettings
from finetune.errors import FinetuneError, job_not_found
from finetune.jobs import Job, JobStatus, JobStore
from finetune.kinds import FINE_TUNE
from finetune.recipe import Recipe
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


def worker_alive(job: Job, stale_after_s: float) -> bool:
    """Whether the job's worker still runs. On this host the process table says so (a worker
    whose heartbeats fail for a while, say while the database restarts, is not dead); a
    worker on another host holds its lease while its heartbeat is fresh."""
    if job.host == socket.gethostname() and job.pid is not None:
        return process_alive(job.pid, job.pid_start)
    if job.heartbeat_at is None:
        return False
    return (datetime.now(UTC) - job.heartbeat_at).total_seconds() <= stale_after_s


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
        """Record a queued job of `kind` for `recipe` (validated) without starting it; `model`
        is the base as the client named it, when the recipe pins the version it resolved to."""
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
        """Start workers for the oldest queued jobs while fewer than the limit are running."""
        running = len(self.store.list_jobs(status=JobStatus.RUNNING))
        queued = self.store.list_jobs(status=JobStatus.QUEUED)[::-1]
        started = []
        for job in queued[: max(0, self.settings.max_running_jobs - running)]:
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
        for job in self.store.list_jobs(status=JobStatus.RUNNING):
            if worker_alive(job, self.settings.stale_after_s):
                continue
            checkpoint = self.resume_point(job)
            where = f"worker {job.pid} on {job.host}"
            holder = (job.pid, job.host)
            if checkpoint is not None and job.attempts < self.settings.max_attempts:
                if self.store.transition(
                    job.id, (JobStatus.RUNNING,), JobStatus.QUEUED, worker=holder
                ):
                    self.store.add_event(
                        job.id,
                        f"The {where} died; the job will resume from {checkpoint.name}",
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
                if self.store.transition(
                    job.id, (JobStatus.RUNNING,), JobStatus.FAILED, worker=holder, error=error
                ):
                    self.store.add_event(job.id, error["message"], level="error")
            recovered.append(self.get(job.id))
        return recovered

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a running worker is told to stop."""
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
            if job.status is JobStatus.RUNNING and job.host == socket.gethostname() and job.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(job.pid, signal.SIGTERM)
        return self.get(job_id)
