"""A federated job's round progress, as `llm-finetune show` prints it: one line per completed
round, from the job's round events."""

from finetune.jobs import Job, JobStore


def round_lines(store: JobStore, job: Job) -> list[str]:
    """'round k/N: ...' for every completed round, oldest first."""
    total = job.recipe.get("config", {}).get("rounds", "?")
    rounds = [e for e in reversed(store.list_events(job.id)) if (e.data or {}).get("round")]
    lines = [f"rounds completed: {len(rounds)}/{total}"]
    lines += [f"  {e.created_at:%H:%M:%S} {e.message}" for e in rounds]
    return lines
