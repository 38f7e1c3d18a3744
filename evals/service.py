"""Evaluations: run a suite against a version (in process) or a server (over HTTP), record the
run, and compare runs. The command line and the promotion gate go through here."""

import asyncio
from dataclasses import dataclass

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.errors import StackError
from core.settings import StackSettings
from evals.compare import Comparison, compare_runs
from evals.loading import load_version
from evals.runner import score_suite
from evals.runs import EvalRun, RunStore
from evals.settings import EvalsSettings
from evals.suites import Suite, load_suite
from evals.targets import HttpTarget, InProcessTarget, Target
from registry.service import Registry, open_registry
from registry.settings import RegistrySettings


@dataclass(frozen=True)
class HttpOptions:
    base_url: str
    api_key: str = "unused"
    concurrency: int = 8


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
        try:
            metrics, examples = asyncio.run(score_suite(suite, target, progress=progress))
        except BaseException as err:
            self.runs.fail(run, str(err) or type(err).__name__)
            raise
        return self.runs.succeed(run, metrics, examples)

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
