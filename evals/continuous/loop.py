"""One step of the loop: check the watched version for drift; on drift, evaluate it on the
held-out suites and the recent corrections; on a drop, train a candidate on the corrections
plus replayed data, put it through the policy's gate and promote it (or leave it on staging).
Every step goes to the timeline, linked to what it made."""

import fnmatch
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from core.database import open_database
from core.errors import ErrorCode, StackError
from core.settings import StackSettings
from evals.continuous.dataset import (
    labelled_rows,
    write_labelled_suite,
    write_training_set,
)
from evals.continuous.events import LoopEvents, Step, new_cycle_id
from evals.continuous.policy import LABELLED_TASK, Policy
from evals.drift.checks import DriftCheck
from evals.drift.monitor import DriftMonitor, TemplateRenderer
from evals.drift.traffic import TrafficSource, open_traffic_source
from evals.errors import invalid
from evals.gates import AliasGate, gate_result
from evals.service import Evaluations
from evals.suites import Suite
from evals.tables import CHAIN
from finetune.hyperparameters import api_recipe, resolve_hyperparameters
from finetune.jobs import Job, JobStatus
from finetune.protocol import JobRequest
from finetune.recipe import Recipe, load_recipe
from finetune.runner import JobRunner
from registry.entities import ModelVersion
from registry.gates import GateResult

log = logging.getLogger(__name__)


def independent_gate(policy: Policy, evaluations: Evaluations) -> AliasGate:
    """The policy's gate on every suite no feedback key wrote: its own and the held-out suites
    evaluated on drift (each cycle adds its recent corrections). A gate none of whose rules
    judges a metric of those suites would rest on feedback alone, and is refused."""
    suites = list(dict.fromkeys([*policy.gate.suites, *policy.evaluate.suites]))
    metrics = sorted(
        f"{task.name}/{metric.name}"
        for suite in suites
        for task in evaluations.suite(suite).tasks
        if task.name != LABELLED_TASK
        for metric in task.metrics
    )
    rules = [*policy.gate.guard, *policy.gate.improve]
    if not any(fnmatch.fnmatchcase(m, rule) for m in metrics for rule in rules):
        raise invalid(
            f"loop policy {policy.name}: the gate would rest on feedback alone: no rule in "
            f"gate.guard or gate.improve ({', '.join(rules) or 'none'}) judges a metric of a "
            f"held-out suite that no feedback wrote ({', '.join(metrics) or 'none'}); guard "
            'one, such as `guard: {"*/exact_match": 0.05}`'
        )
    return policy.gate.model_copy(update={"suites": suites})


@dataclass(frozen=True)
class Outcome:
    cycle: str | None  # None when nothing drifted (no cycle began)
    summary: str


class ContinuousLoop:
    def __init__(
        self,
        policy: Policy,
        evaluations: Evaluations,
        monitor: DriftMonitor,
        runner: JobRunner,
        engine: Engine,
        home: Path,
        poll_s: float = 2.0,
    ):
        self.policy = policy
        self.gate = independent_gate(policy, evaluations)
        self.evaluations = evaluations
        self.registry = evaluations.registry
        self.monitor = monitor
        self.runner = runner
        self.engine = engine  # the evaluation tables
        self.events = LoopEvents(engine)
        self.home = home
        self.poll_s = poll_s

    @classmethod
    def open(
        cls, policy: Policy, stack: StackSettings | None = None,
        traffic: TrafficSource | None = None,
    ) -> "ContinuousLoop":  # fmt: skip
        """The loop on the stack's database, reading `traffic` (by default, the reader the
        evaluation settings name)."""
        stack = stack or StackSettings()
        evaluations = Evaluations.open(stack)
        engine = open_database(stack.resolved_database_url, CHAIN)
        monitor = DriftMonitor(
            traffic or open_traffic_source(stack), engine, TemplateRenderer(evaluations.registry)
        )
        return cls(policy, evaluations, monitor, JobRunner.open(stack), engine, stack.resolved_home)

    def step(self) -> Outcome:
        p = self.policy
        watched = self.registry.resolve(f"{p.model}@{p.alias}")
        check = self.monitor.check(watched.ref, p.drift)
        if check is None:
            return Outcome(None, f"{watched.ref}: too little traffic to check yet")
        if not check.drifted:
            return Outcome(None, f"{watched.ref}: no drift (score {check.score:.2f})")
        cycle = new_cycle_id()
        self._event(
            cycle, Step.DRIFT, check.id, version=watched.ref, score=check.score, alarms=check.alarms
        )
        try:
            return self._cycle(cycle, watched, check)
        except Exception as err:
            message = err.message if isinstance(err, StackError) else repr(err)
            self._event(cycle, Step.FAILED, error=message)
            raise

    def _event(self, cycle: str, step: Step, ref: str | None = None, **detail) -> None:
        self.events.add(cycle, self.policy.model, self.policy.name, step, ref, **detail)

    def _cycle(self, cycle: str, watched: ModelVersion, check: DriftCheck) -> Outcome:
        p = self.policy
        versions = [v.ref for v in self.registry.list_versions(p.model)]
        labelled = labelled_rows(self.engine, self.monitor.traffic, versions, p.evaluate.labelled)
        if len(labelled) < p.evaluate.labelled.min_rows or not labelled.held_out:
            self._event(cycle, Step.WAITING, corrections=len(labelled))
            return Outcome(
                cycle,
                f"drift on {watched.ref}, but only {len(labelled)} "
                f"corrections (of {p.evaluate.labelled.min_rows}): waiting for more",
            )
        folder = self.home / "evals" / "loop" / cycle
        folder.mkdir(parents=True, exist_ok=True)
        labelled_suite = write_labelled_suite(
            folder, labelled.held_out, p.evaluate.labelled.max_tokens
        )
        suites = [self.evaluations.suite(s) for s in [*p.evaluate.suites, str(labelled_suite)]]
        scores = self._evaluate(cycle, watched, suites)

        missing = sorted(set(p.retrain_below) - set(scores))
        if missing:
            raise invalid(
                f"loop policy {p.name}: retrain_below names {', '.join(missing)}, "
                f"which no suite gives; the metrics are {', '.join(sorted(scores))}"
            )
        drops = {m: scores[m] for m, floor in p.retrain_below.items() if scores[m] < floor}
        if not drops:
            self._event(cycle, Step.DECISION, retrain=False, scores=scores)
            return Outcome(cycle, f"drift on {watched.ref}, but no metric fell below its floor")
        self._event(cycle, Step.DECISION, retrain=True, below=drops, floors=p.retrain_below)

        train = write_training_set(folder, labelled.train, p.train.replay)
        rows = sum(1 for _ in train.open(encoding="utf-8"))
        self._event(
            cycle, Step.TRAINING_DATA, str(train), rows=rows, corrections=len(labelled.train)
        )
        base = self.registry.base_of(watched)
        job = self.runner.submit(self._recipe(base, train, rows), base.ref)
        self._event(cycle, Step.JOB, job.id, base=base.ref)
        job = self._wait(job)
        if job.status is not JobStatus.SUCCEEDED or job.registered_version is None:
            error = job.error["message"] if job.error else job.status.value
            self._event(cycle, Step.FAILED, job.id, error=f"fine-tuning job {job.status}: {error}")
            return Outcome(cycle, f"the fine-tuning job {job.id} {job.status.value}: {error}")
        candidate = self.registry.resolve(job.registered_version)
        self._event(cycle, Step.VERSION, candidate.ref, job=job.id)
        if p.promote == "staging":
            return Outcome(
                cycle,
                f"{candidate.ref} is on staging; promote it with "
                f"`llm-registry promote {candidate.ref} {p.alias}`",
            )
        return self.promote(cycle, candidate, labelled_suite)

    def _evaluate(self, cycle: str, version: ModelVersion, suites: list[Suite]) -> dict:
        scores = {}
        for suite in suites:
            run = self.evaluations.run(suite, version.ref, progress=False, reuse=True)
            metrics = {name: value["value"] for name, value in run.metrics.items()}
            self._event(
                cycle,
                Step.EVALUATION,
                run.id,
                suite=suite.name,
                version=version.ref,
                metrics=metrics,
            )
            scores |= metrics
        return scores

    def _recipe(self, base: ModelVersion, train: Path, rows: int) -> Recipe:
        """The policy's recipe on the watched version's base, or the API's `auto` rule; the
        adapter is registered as a version of the model the loop looks after."""
        p = self.policy
        if p.train.recipe is not None:
            datasets = [{"path": str(train), "type": "chat"}]
            return load_recipe(
                p.train.recipe,
                {
                    "base_model": base.ref,
                    "datasets": datasets,
                    "suffix": p.train.suffix,
                    "register_as": p.model,
                },
            )
        request = JobRequest(
            model=base.ref, training_file=train.name, suffix=p.train.suffix, seed=p.train.seed
        )
        hyper = resolve_hyperparameters(request, rows)
        recipe = api_recipe(
            request, base.ref, self.registry.local_copy(base), [(train, "train")], hyper
        )
        return recipe.model_copy(update={"register_as": p.model})

    def _wait(self, job: Job) -> Job:
        deadline = time.monotonic() + self.policy.train.timeout_s
        while not job.status.finished:
            if time.monotonic() > deadline:
                self.runner.cancel(job.id)
                raise StackError(
                    ErrorCode.UNAVAILABLE,
                    f"fine-tuning job {job.id} took longer "
                    f"than {self.policy.train.timeout_s:g} s; it was cancelled",
                )
            time.sleep(self.poll_s)
            job = self.runner.get(job.id)
        return job

    def promote(self, cycle: str, candidate: ModelVersion, labelled_suite: Path) -> Outcome:
        """Put the candidate through the gate, on the suites no feedback wrote and the
        cycle's held-out corrections, and move the alias when it passes."""
        p = self.policy
        config = self.gate.model_copy(update={"suites": [*self.gate.suites, str(labelled_suite)]})

        def gate(candidate: ModelVersion, champion: ModelVersion | None, alias: str) -> GateResult:
            return gate_result(self.evaluations, candidate, champion, config)

        reason = f"continuous loop {p.name}, {cycle}"
        try:
            moved = self.registry.gated_by(gate).promote(candidate.ref, p.alias, reason=reason)
        except StackError as err:
            if err.code is not ErrorCode.GATE_FAILED:
                raise
            self._event(cycle, Step.GATE, candidate.ref, passed=False, reason=err.message)
            return Outcome(cycle, f"{candidate.ref} stays on staging: {err.message}")
        self._event(cycle, Step.GATE, candidate.ref, passed=True, gate=moved.gate)
        self._event(
            cycle,
            Step.PROMOTED,
            str(moved.id),
            alias=p.alias,
            from_version=moved.from_version,
            to_version=moved.to_version,
        )
        return Outcome(cycle, f"{p.model}@{p.alias} moved to {candidate.ref}")
