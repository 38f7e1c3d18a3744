"""The process that runs one job: `python -m finetune.worker JOB_ID` (the runner starts it;
`llm-finetune run` does the same in the foreground).

It leases the queued job (`core.leases`) and renews the lease while it works, records events
and checkpoints as the job's Trainer reports them, runs the job's kind (see
`finetune.kinds`), records the outcome, and then starts the next queued job. Everything it
writes is fenced by its lease: once the job is cancelled or taken over by another worker, it
stops and writes nothing more. SIGTERM (`systemctl stop`) saves a checkpoint at the next
step and puts the job back in the queue, to resume from there."""

import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from core.errors import StackError
from core.leases import Lease, LeaseLost
from core.logs import configure_logging
from core.tracing import configure, current_span, tracer
from finetune.jobs import Job, JobStatus, JobStore
from finetune.kinds import JobContext, kind_runner
from finetune.runner import JobRunner, process_start, steps_over_budget
from finetune.settings import FinetuneSettings
from registry.service import open_registry

log = logging.getLogger(__name__)


class Why(StrEnum):
    """Why a worker stops before its job's kind is done."""

    TERMINATED = "terminated"  # SIGTERM: checkpoint, then requeue
    LEASE_LOST = "lease lost"  # cancelled or taken over: write nothing more
    OUT_OF_TIME = "out of time"  # over the wall-time budget: fail


class StopRequest(threading.Event):
    """Set when the worker must stop, with the first reason it was given."""

    why: Why | None = None

    def request(self, why: Why) -> None:
        if not self.is_set():
            self.why = why
            self.set()


class JobCallback(TrainerCallback):
    """Trainer events -> job events and checkpoint rows (through a store under the worker's
    lease); a stop request ends training, after a checkpoint when the worker was terminated."""

    def __init__(
        self,
        store: JobStore,
        job: Job,
        job_dir: Path,
        home: Path,
        stop: StopRequest,
        max_steps: int,
    ):
        self.store = store
        self.job = job
        self.job_dir = job_dir
        self.home = home
        self.stop = stop
        self.max_steps = max_steps
        self._last: dict[str, float] = {}
        self._saved_step = -1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Submission checks what a recipe says; this is what the Trainer made of it (packing,
        # several processes).
        if state.max_steps > self.max_steps:
            raise steps_over_budget(state.max_steps, self.max_steps, "max_steps")

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        for key, metric, label in (
            ("loss", "train_loss", "training"),
            ("eval_loss", "eval_loss", "eval"),
        ):
            if key in (logs or {}):
                self._last[metric] = float(logs[key])
                message = (
                    f"Step {state.global_step}/{state.max_steps}: {label} loss={logs[key]:.4f}"
                )
                self.store.add_event(self.job.id, message, data={"step": state.global_step, **logs})
                current_span().add_event(
                    "step", {"step": state.global_step, f"{label}_loss": float(logs[key])}
                )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = self.job_dir / "checkpoints" / f"checkpoint-{state.global_step}"
        self.store.add_checkpoint(
            self.job.id, state.global_step, _relative(path, self.home), dict(self._last)
        )
        self.store.add_event(self.job.id, f"Checkpoint saved at step {state.global_step}")
        self._saved_step = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stop_if_asked(state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stop_if_asked(state, control)

    def _stop_if_asked(self, state: Any, control: Any) -> None:
        if self.stop.is_set():
            control.should_training_stop = True
            control.should_save = (
                self.stop.why is Why.TERMINATED and state.global_step != self._saved_step
            )


class StepProgress(TrainerCallback):
    """`on_step(step, max_steps, note)` after each step and each log, the note giving the
    last training loss: how `llm-finetune run` draws its progress bar."""

    def __init__(self, on_step: Callable[[int, int, str], None]) -> None:
        self.on_step = on_step
        self._note = ""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.on_step(state.global_step, state.max_steps, self._note)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if "loss" in (logs or {}):
            self._note = f"loss {float(logs['loss']):.4f}"
            self.on_step(state.global_step, state.max_steps, self._note)


def _relative(path: Path, home: Path) -> str:
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


def _heartbeat(
    store: JobStore,
    lease: Lease,
    settings: FinetuneSettings,
    budget_s: float,
    stop: StopRequest,
    done: threading.Event,
) -> None:
    """Renew the job's lease until `done`. A lost lease (the job cancelled or taken over)
    stops the worker, and so does training past `budget_s` seconds."""
    ttl = timedelta(seconds=settings.stale_after_s)
    deadline = time.monotonic() + budget_s
    while not done.wait(settings.heartbeat_s):
        if time.monotonic() > deadline:
            stop.request(Why.OUT_OF_TIME)
        try:
            lease = store.renew(lease, ttl)
        except LeaseLost:
            stop.request(Why.LEASE_LOST)
            return
        except Exception:  # the database may be back at the next beat; keep training
            log.exception(
                "job %s: renewing its lease failed; trying again in %.0f s",
                lease.item_id,
                settings.heartbeat_s,
            )


def run_job(
    runner: JobRunner,
    job_id: str,
    *,
    progress: bool = False,
    on_step: Callable[[int, int, str], None] | None = None,
) -> Job:
    """Claim and run job `job_id` in this process; returns the job as it ended. `progress`
    shows the Trainer's own (tqdm) bar; `on_step` is called as `StepProgress` says."""
    with tracer().start_as_current_span("finetune.job") as span:
        span.set_attribute("llmops.job.id", job_id)
        job = _run_job(runner, job_id, progress=progress, on_step=on_step)
        span.set_attribute("llmops.job.kind", job.kind)
        span.set_attribute("llmops.job.status", job.status.value)
        return job


def _run_job(
    runner: JobRunner,
    job_id: str,
    *,
    progress: bool,
    on_step: Callable[[int, int, str], None] | None,
) -> Job:
    store, settings = runner.store, runner.settings
    pid, host = os.getpid(), socket.gethostname()
    ttl = timedelta(seconds=settings.stale_after_s)
    claimed = store.claim(
        job_id, f"{host}:{pid}", ttl, pid=pid, host=host, pid_start=process_start(pid)
    )
    if claimed is None:
        log.info("job %s is not queued, or another worker holds it; nothing to do", job_id)
        return runner.get(job_id)
    job, lease = claimed
    held = store.under(lease)
    job_dir = runner.job_dir(job)
    stop, done = StopRequest(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.request(Why.TERMINATED))
    began = time.monotonic()
    beat = threading.Thread(
        target=_heartbeat,
        args=(store, lease, settings, settings.max_job_seconds - job.run_seconds, stop, done),
        daemon=True,
    )
    beat.start()
    checkpoint = runner.resume_point(job)
    started = (
        f"resumed from {checkpoint.name} (attempt {job.attempts})" if checkpoint else "started"
    )
    try:
        held.add_event(job.id, f"Job {started}")
        home = runner.stack.resolved_home
        context = JobContext(
            job=job,
            job_dir=job_dir,
            stack=runner.stack,
            store=held,
            registry=open_registry(runner.stack),
            stop=stop,
            resume_from=checkpoint,
            progress=progress,
            callbacks=[
                JobCallback(held, job, job_dir, home, stop, settings.max_steps_per_job),
                *([StepProgress(on_step)] if on_step is not None else []),
            ],
        )
        outcome = kind_runner(job.kind)(context)
        seconds = job.run_seconds + time.monotonic() - began
        if stop.why is Why.LEASE_LOST:
            raise LeaseLost(job.id)
        # A stop that came after the job registered its result is too late to matter.
        if stop.why is Why.TERMINATED and outcome.registered is None:
            _requeue(runner, job, lease, seconds)
            return runner.get(job.id)
        if stop.why is Why.OUT_OF_TIME and outcome.registered is None:
            message = (
                f"the job trained for {seconds:.0f} s, over the budget of "
                f"{settings.max_job_seconds:.0f} s per job; submit it again with fewer steps "
                "(a smaller max_steps or fewer epochs)"
            )
            _fail(store, job, lease, "time_limit_exceeded", message, None, run_seconds=seconds)
            return runner.get(job.id)
        if outcome.registered is not None:
            registered = outcome.fine_tuned_model or outcome.registered.ref
            held.add_event(job.id, f"New model created: {registered} ({outcome.registered.ref})")
        succeeded = store.transition(
            job.id,
            (JobStatus.RUNNING,),
            JobStatus.SUCCEEDED,
            lease=lease,
            fine_tuned_model=outcome.fine_tuned_model,
            registered_version=outcome.registered.ref if outcome.registered else None,
            trained_tokens=outcome.trained_tokens,
            metrics=outcome.metrics,
            run_seconds=seconds,
        )
        if succeeded:
            store.add_event(job.id, "The job has successfully completed")
    except LeaseLost:
        log.warning("job %s: cancelled or taken over by another worker; stopping", job.id)
    except StackError as err:
        # The message reaches API clients: it names files by their place under LLMOPS_HOME.
        message = err.message.replace(f"{runner.stack.resolved_home}/", "")
        _fail(store, job, lease, err.api_code, message, err.param)
    except Exception as err:
        traceback.print_exc()
        message = f"internal error ({type(err).__name__}); see llm-finetune logs {job.id}"
        _fail(store, job, lease, "internal_error", message, None)
    finally:
        done.set()
        beat.join()
        if stop.why is not Why.TERMINATED:  # a stopping machine starts no new work
            runner.dispatch()
    return runner.get(job.id)


def _requeue(runner: JobRunner, job: Job, lease: Lease, seconds: float) -> None:
    """Give the job back to the queue, to resume from its newest checkpoint."""
    checkpoint = runner.resume_point(job)
    if runner.store.transition(
        job.id, (JobStatus.RUNNING,), JobStatus.QUEUED, lease=lease, run_seconds=seconds
    ):
        then = f"resume from {checkpoint.name}" if checkpoint else "start again"
        runner.store.add_event(
            job.id,
            f"The worker was stopped (SIGTERM); the job is queued again and will {then}",
            level="warn",
        )


def _fail(
    store: JobStore,
    job: Job,
    lease: Lease,
    code: str,
    message: str,
    param: str | None,
    **values: Any,
) -> None:
    error = {"code": code, "message": message, "param": param}
    if store.transition(
        job.id, (JobStatus.RUNNING,), JobStatus.FAILED, lease=lease, error=error, **values
    ):
        store.add_event(job.id, f"The job failed: {message}", level="error")


def run_as_replica(runner: JobRunner, job_id: str) -> int:
    """A non-zero rank under `accelerate launch`: run alongside rank 0, which owns the job's
    state, events and outcome."""
    deadline = time.monotonic() + 300
    while (job := runner.get(job_id)).status is JobStatus.QUEUED:
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.5)
    if job.status is not JobStatus.RUNNING:
        return 0
    context = JobContext(
        job=job,
        job_dir=runner.job_dir(job),
        stack=runner.stack,
        store=runner.store,
        registry=open_registry(runner.stack),
        stop=threading.Event(),
        resume_from=runner.resume_point(job),
        main_process=False,
    )
    kind_runner(job.kind)(context)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m finetune.worker JOB_ID", file=sys.stderr)
        return 2
    configure_logging()  # as the command that started the job logs
    configure("llm-finetune")
    runner = JobRunner.open()
    if int(os.environ.get("RANK", "0")) > 0:
        return run_as_replica(runner, argv[0])
    job = run_job(runner, argv[0])
    return 0 if job.status is JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
