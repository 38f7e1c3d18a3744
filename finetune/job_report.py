"""How the command lines open the job runner and show a job: shared by `llm-finetune` and
its `federated` and `tune` groups."""

from typing import Any

import click

from core.console import print_json
from finetune.jobs import Job
from finetune.runner import JobRunner


def open_runner() -> JobRunner:
    """The runner, after recovering the jobs whose workers died."""
    runner = JobRunner.open()
    runner.recover()
    return runner


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status.value,
        "model": job.model,
        "created_at": job.created_at.isoformat(),
        "attempts": job.attempts,
        "fine_tuned_model": job.fine_tuned_model,
        "registered_version": job.registered_version,
        "metrics": job.metrics,
        "error": job.error,
    }


def report_job(job: Job, as_json: bool) -> None:
    if as_json:
        print_json(job_summary(job))
        return
    click.echo(f"job {job.id}: {job.status.value}")
    if job.fine_tuned_model:
        click.echo(f"  fine-tuned model: {job.fine_tuned_model} ({job.registered_version})")
    for key, value in sorted((job.metrics or {}).items()):
        click.echo(f"  {key}: {value:.4g}")
    if job.error:
        click.echo(f"  error: {job.error['message']}")
