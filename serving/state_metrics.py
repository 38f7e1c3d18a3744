"""Gauges of the work the stack's database holds, read when `/metrics` is scraped: fine-tuning
jobs by kind and status, eval runs by status, each model's newest drift check and the
continuous-training loop's cycles. One grouped query per store, kept for `ttl_s`, so that
however often (and from however many scrapers) `/metrics` is read, the database is not."""

import threading
import time
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from evals.continuous.events import LoopEvents
from evals.drift.checks import DriftStore
from evals.runs import RunStatus, RunStore
from finetune.jobs import JobStatus, JobStore
from finetune.kinds import JOB_KINDS


class StateCollector(Collector):
    def __init__(
        self,
        jobs: JobStore,
        runs: RunStore,
        drift: DriftStore,
        loop: LoopEvents,
        ttl_s: float = 5.0,
    ):
        self.jobs = jobs
        self.runs = runs
        self.drift = drift
        self.loop = loop
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._families: list[GaugeMetricFamily] = []
        self._read_at = float("-inf")

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:  # concurrent scrapes share one read
            if time.monotonic() - self._read_at >= self.ttl_s:
                self._families = self._read()
                self._read_at = time.monotonic()
            return list(self._families)

    def _read(self) -> list[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "llmops_finetune_jobs", "Jobs by kind and status.", labels=("kind", "status")
        )
        counts = self.jobs.count_by_status()
        for kind in sorted(set(JOB_KINDS) | {kind for kind, _ in counts}):
            for status in JobStatus:
                jobs.add_metric((kind, status.value), counts.get((kind, status), 0))
        runs = GaugeMetricFamily(
            "llmops_eval_runs", "Evaluation runs by status.", labels=("status",)
        )
        run_counts = self.runs.count_by_status()
        for run_status in RunStatus:
            runs.add_metric((run_status.value,), run_counts.get(run_status, 0))
        drift = GaugeMetricFamily(
            "llmops_drift_last_check_timestamp_seconds",
            "When the newest drift check of each model was made (by the gateway, the loop or "
            "`llm-evals drift`), in Unix time.",
            labels=("model",),
        )
        for model, at in sorted(self.drift.last_checked().items()):
            drift.add_metric((model,), at.timestamp())
        cycles = GaugeMetricFamily(
            "llmops_loop_cycles",
            "Continuous-training cycles of each model that reached each step "
            "(drift, evaluation, job, promoted, failed, ...).",
            labels=("model", "step"),
        )
        last = GaugeMetricFamily(
            "llmops_loop_last_step_timestamp_seconds",
            "When a cycle of each model last reached each step, in Unix time.",
            labels=("model", "step"),
        )
        for count in self.loop.steps_reached():
            cycles.add_metric((count.model, count.step.value), count.cycles)
            last.add_metric((count.model, count.step.value), count.last_at.timestamp())
        return [jobs, runs, drift, cycles, last]
