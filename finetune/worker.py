"""The process that runs one job: `python -m finetune.worker JOB_ID` (the runner starts it;
`llm-finetune run` does the same in the foreground).

It claims the queued job, beats a heartbeat, records events and checkpoints as the job's
Trainer reports them, stops when the job is cancelled, runs the job's kind (see
`finetune.kinds`), records the outcome, and then starts the next queued job."""

import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from core.errors import StackError
from finetune.jobs import Job, JobStatus, JobStore
from finetune.kinds import JobContext, kind_runner
from finetune.runner import JobRunner, process_start
from registry.service import open_registry

log = logging.getLogger(__name__)


class JobCallback(TrainerCallback):
    """Trainer events -> job events and checkpoint rows; a stop request ends training."""

    def __init__(self, store: JobStore, job: Job, job_dir: Path, home: Path, stop: threading.Event):
        self.store = store
        self.job = job
        self.job_dir = job_dir
        self.home = home
        self.stop = stop
        self._last: dict[str, float] = {}

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

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = self.job_dir / "checkpoints" / f"checkpoint-{state.global_step}"
        self.store.add_checkpoint(
            self.job.id, state.global_step, _relative(path, self.home), dict(self._last)
        )
        self.store.add_event(self.job.id, f"Checkpoint saved at step {state.global_step}")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop.is_set():
            control.should_training_stop = True
            control.should_save = False


def _relative(path: Path, home: Path) -> str:
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


def _heartbeat(
    store: JobStore, job_id: str, interval: float, stop: threading.Event, done: threading.Event
) -> None:
    """Beat until `done`; a job that is no longer running (cancelled) sets `stop`."""
    pid = os.getpid()
    while not done.wait(interval):
        try:
            status = store.heartbeat(job_id, pid)
        except Exception:  # the database may be back at the next beat; keep training
            log.exception("job %s: heartbeat failed; trying again in %.0f s", job_id, interval)
            continue
        if status is not JobStatus.RUNNING:
            stop.set()


def run_job(runner: JobRunner, job_id: str, *, progress: bool = False) -> Job:
    """Claim and run job `job_id` in this process; returns the job as it ended."""
    store = runner.store
    job = store.claim(job_id, os.getpid(), socket.gethostname(), process_start(os.getpid()))
    if job is None:
        log.info("job %s is not queued; nothing to do", job_id)
        return runner.get(job_id)
    job_dir = runner.job_dir(job)
    stop, done = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    beat = threading.Thread(
        target=_heartbeat,
        args=(store, job.id, runner.settings.heartbeat_s, stop, done),
        daemon=True,
    )
    beat.start()
    checkpoint = runner.resume_point(job)
    started = (
        f"resumed from {checkpoint.name} (attempt {job.attempts})" if checkpoint else "started"
    )
    store.add_event(job.id, f"Job {started}")
    try:
        context = JobContext(
            job=job,
            job_dir=job_dir,
            stack=runner.stack,
            store=store,
            registry=open_registry(runner.stack),
            stop=stop,
            resume_from=checkpoint,
            progress=progress,
            callbacks=[JobCallback(store, job, job_dir, runner.stack.resolved_home, stop)],
        )
        outcome = kind_runner(job.kind)(context)
        if stop.is_set():
            # Cancelled jobs are already marked; any other SIGTERM ends the job here.
            _fail(store, job, "stopped", "the worker was stopped (SIGTERM)", None)
            return runner.get(job.id)
        if outcome.registered is not None:
            registered = outcome.fine_tuned_model or outcome.registered.ref
            store.add_event(job.id, f"New model created: {registered} ({outcome.registered.ref})")
        succeeded = store.transition(
            job.id,
            (JobStatus.RUNNING,),
            JobStatus.SUCCEEDED,
            fine_tuned_model=outcome.fine_tuned_model,
            registered_version=outcome.registered.ref if outcome.registered else None,
            trained_tokens=outcome.trained_tokens,
            metrics=outcome.metrics,
        )
        if succeeded:
            store.add_event(job.id, "The job has successfully completed")
    except StackError as err:
        # The message reaches API clients: it names files by their place under LLMOPS_HOME.
        message = err.message.replace(f"{runner.stack.resolved_home}/", "")
        _fail(store, job, err.api_code, message, err.param)
    except Exception as err:
        traceback.print_exc()
        message = f"internal error ({type(err).__name__}); see llm-finetune logs {job.id}"
        _fail(store, job, "internal_error", message, None)
    finally:
        done.set()
        beat.join()
        runner.dispatch()
    return runner.get(job.id)


def _fail(store: JobStore, job: Job, code: str, message: str, param: str | None) -> None:
    error = {"code": code, "message": message, "param": param}
    if store.transition(job.id, (JobStatus.RUNNING,), JobStatus.FAILED, error=error):
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    runner = JobRunner.open()
    if int(os.environ.get("RANK", "0")) > 0:
        return run_as_replica(runner, argv[0])
    job = run_job(runner, argv[0])
    return 0 if job.status is JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
