"""Job kinds: what a worker process runs for a job. Each kind is one entry of `JOB_KINDS`, the
`module:callable` of its runner, imported only by the workers that run it; a new kind
(distillation, export, a search trial, a federated round) plugs in as one more entry.

A runner gets the job's context and returns its outcome, or raises a StackError whose code
and message become the job's error. The worker owns everything else: claiming the job, the
heartbeat, cancellation, events, the job's final status, and starting the next job."""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ErrorCode
from core.plugins import load_plugin
from core.settings import StackSettings
from finetune.errors import FinetuneError
from finetune.jobs import Job, JobStore
from registry.entities import ModelVersion
from registry.service import Registry

FINE_TUNE = "fine-tune"
FEDERATED = "federated"
DISTILL = "distill"
PRUNE = "prune"
TUNE_TRIAL = "tune-trial"

JOB_KINDS: dict[str, str] = {
    FINE_TUNE: "finetune.fine_tune:run_fine_tune",
    FEDERATED: "finetune.federated.job:run_federated",
    DISTILL: "finetune.distill.job:run_distill",
    PRUNE: "finetune.prune.job:run_prune",
    TUNE_TRIAL: "finetune.automl.trial:run_tune_trial",
}


@dataclass
class JobContext:
    job: Job
    job_dir: Path
    stack: StackSettings
    store: JobStore
    registry: Registry
    stop: threading.Event  # set when the job is cancelled or the worker told to stop
    resume_from: Path | None = None  # the newest complete checkpoint of an earlier attempt
    main_process: bool = True  # False on the other ranks of a multi-GPU job: train, no state
    progress: bool = False  # show a progress bar (a foreground run)
    callbacks: Sequence[Any] = ()  # Trainer callbacks that report steps and checkpoints


@dataclass(frozen=True)
class JobOutcome:
    registered: ModelVersion | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def kind_runner(kind: str) -> Callable[[JobContext], JobOutcome]:
    """The runner of `kind`; INVALID for a kind this release does not know."""
    if kind not in JOB_KINDS:
        raise FinetuneError(
            ErrorCode.INVALID,
            f"job kind {kind!r} is unknown to this release; known kinds: "
            f"{', '.join(sorted(JOB_KINDS))}",
            param="kind",
        )
    return load_plugin(JOB_KINDS[kind], "job kind")
