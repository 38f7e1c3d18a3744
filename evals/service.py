"""Evaluations: run a suite against a version (in process) or a server (over HTTP), record the
run, and compare runs. The command line, the promotion gate and the gateway's Evals API
(`evals.handlers`, which queues runs and executes them on worker threads) go through here."""

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.errors import ErrorCode, StackError
from core.settings import StackSettings
from core.tracing import tracer
from evals.compare import Comparison, compare_runs
from evals.errors import EvalsError
from evals.grading import summarize
from evals.loading import load_version
from evals.runner import score_suite, work_units
from evals.runs import EvalRun, RunStatus, RunStore
from evals.settings import EvalsSettings
from evals.suites import Suite, load_suite
from evals.targets import HttpTarget, InProcessTarget, Target
from registry.entities import ModelVersion
from registry.service import Registry, open_registry
from registry.settings import RegistrySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpOptions:
    base_url: str
    api_key: str = "unused"
    concurrency: int = 8


class RunStopped(EvalsError):
    """A run was cancelled, or its process is stopping: its worker stops scoring."""


class Watch:
    """A run's progress (units of work done, of `total`), and whether it goes on: `stop` is
    set in this process (a cancel over HTTP, the gateway stopping); a run cancelled by
    another process is noticed by asking the store, at most every `poll_s`."""

    def __init__(self, runs: RunStore, run_id: str, poll_s: float = 2.0):
        self.runs = runs
        self.run_id = run_id
        self.poll_s = poll_s
        self.stop = threading.Event()
        self.done = 0
        self.total = 0
        self._polled = time.monotonic()

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0

    def advance(self, units: int) -> None:
        self.done += units
        self.check()

    def check(self) -> None:
        if not self.stop.is_set() and time.monotonic() - self._polled >= self.poll_s:
            self._polled = time.monotonic()
            if not self.runs.status(self.run_id).active:
                self.stop.set()
        if self.stop.is_set():
            raise RunStopped(
                ErrorCode.CONFLICT,
                f"run {self.run_id} stopped before it finished: it was cancelled, or its "
                "process is stopping",
                api_code="eval_run_stopped",
            )


class _Watched(Target):
    """A target whose every step counts towards the run's progress, and may stop it."""

    def __init__(self, target: Target, watch: Watch):
        self.target = target
        self.watch = watch
        self.label = target.label
        self.version_ref = target.version_ref

    def _advance(self, progress):
        def advance(units: int) -> None:
            progress(units)
            self.watch.advance(units)

        return advance

    async def answer(self, prompts, generation, progress):
        self.watch.check()
        return await self.target.answer(prompts, generation, self._advance(progress))

    async def loglik(self, prompts, continuations, progress):
        self.watch.check()
        return await self.target.loglik(prompts, continuations, self._advance(progress))


class Evaluations:
    def __init__(self, registry: Registry, runs: RunStore, settings: EvalsSettings, actor: str):
        self.registry = registry
        self.runs = runs
        self.settings = settings
        self.actor = actor

    @classmethod
    def open(cls, stack: StackSettings | None = None) -> "Evaluations":
        stack = stack or StackSettings()
        # Evaluations never promote, and the eval gate opens them: their registry has no gate.
        return cls(
            open_registry(stack, RegistrySettings(promotion_gate=None)),
            RunStore.open(stack.resolved_database_url, stack.home),
            EvalsSettings(),
            stack.actor,
        )

    def suite(self, reference: str) -> Suite:
        return load_suite(reference, self.settings.suites_dir)

    def run(
        self,
        suite: Suite,
        model: str,
        *,
        http: HttpOptions | None = None,
        progress: bool = True,
        reuse: bool = False,
    ) -> EvalRun:
        """Score `suite` on `model` and record the run. With `reuse`, a succeeded run of the
        same suite on the same version is returned instead of running again."""
        target = self._target(model, http)
        if reuse and target.version_ref is not None:
            fresh = self.runs.fresh(suite.digest, target.version_ref)
            if fresh is not None:
                return fresh
        run = self.runs.create(
            suite=suite.name,
            suite_digest=suite.digest,
            model=model,
            version=target.version_ref,
            target="in process" if http is None else http.base_url,
            created_by=self.actor,
        )
        return self.score(run, suite, target, progress=progress)

    def score(
        self,
        run: EvalRun,
        suite: Suite,
        target: Target,
        *,
        progress: bool = True,
        watch: Watch | None = None,
        expose_errors: bool = True,
    ) -> EvalRun:
        """Score the recorded, running `run` and record its outcome. A run cancelled
        meanwhile (here or by another process) stops at its next batch and stays cancelled.
        Without `expose_errors`, an unexpected error is recorded by its type only (the log
        has the rest), since the record may be read over HTTP."""
        watch = watch or Watch(self.runs, run.id)
        watch.total = sum(work_units(task) for task in suite.tasks)
        try:
            with tracer().start_as_current_span("eval.run") as span:
                span.set_attribute("llmops.eval.run_id", run.id)
                span.set_attribute("llmops.eval.suite", suite.name)
                span.set_attribute("gen_ai.request.model", run.model)
                metrics, examples = asyncio.run(
                    score_suite(suite, _Watched(target, watch), progress=progress)
                )
        except BaseException as err:
            if isinstance(err, StackError):
                error = err.message
            elif expose_errors:
                error = str(err) or type(err).__name__
            else:
                log.error("evaluation run %s failed", run.id, exc_info=err)
                error = f"scoring failed ({type(err).__name__}); the gateway log has the details"
            self.runs.fail(run, error)
            raise
        return self.runs.succeed(run, metrics, examples, summarize(examples))

    def queue(
        self,
        suite: Suite,
        model: str,
        version: ModelVersion,
        *,
        created_by: str,
        owner: str | None = None,
        name: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> EvalRun:
        """Record a queued run of `suite` on `version` (what `model` resolved to), for
        `execute` on a worker thread of this process."""
        return self.runs.create(
            suite=suite.name,
            suite_digest=suite.digest,
            model=model,
            version=version.ref,
            target="in process",
            created_by=created_by,
            status=RunStatus.QUEUED,
            owner=owner,
            name=name,
            metadata=metadata,
        )

    def recover(self) -> list[EvalRun]:
        """Fail the runs whose process stopped before they finished (at a gateway's start)."""
        return self.runs.recover()

    def _target(self, model: str, http: HttpOptions | None) -> Target:
        if http is None:
            loaded = load_version(self.registry, model)
            return InProcessTarget(
                loaded.model, loaded.tokenizer, loaded.version.ref, self.settings.batch_size
            )

        def tokenizer() -> PreTrainedTokenizerBase | None:
            """A model registered here too: score log-likelihoods with its tokenizer (fetched
            only when a task needs it)."""
            try:
                version = self.registry.resolve(model)
                base = self.registry.local_copy(self.registry.base_of(version))
            except StackError:
                return None
            return AutoTokenizer.from_pretrained(base)

        # The server may serve another registry's versions: none is recorded as scored.
        return HttpTarget(
            http.base_url,
            model,
            api_key=http.api_key,
            concurrency=http.concurrency,
            tokenizer=tokenizer,
        )

    def compare(self, a_id: str, b_id: str) -> Comparison:
        a, b = self.runs.get(a_id), self.runs.get(b_id)
        return compare_runs(a, self.runs.examples(a), b, self.runs.examples(b))
