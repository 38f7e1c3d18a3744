"""The Evals API's handlers (`evals.api` routes to them): suites as evals, runs started in
the gateway's process, and the per-example outputs of finished runs.

A run belongs to the key that started it: to another key it does not exist (404), admins
see every run, and on a gateway without keys the runs no key owns are everyone's (those of
`llm-evals` too). A key runs evals only on the models its allow-list names and it may see.

A run of a suite the catalog does not list (the continuous loop's, `llm-evals run` on a file
elsewhere) is reached under its suite's name as the eval id; it has no catalog entry, so its
output items lack what only the suite file holds (choices, generation settings)."""

import re
import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any

from core.callers import Caller
from core.errors import ErrorCode, StackError
from core.listing import ListPage, page
from evals.background import BackgroundRuns
from evals.catalog import CatalogSuite, SuiteCatalog, eval_not_found
from evals.errors import EvalsError
from evals.grading import GRADING, example_results
from evals.metrics import BUILT_IN
from evals.protocol import (
    ChatMessage,
    CustomDataSourceConfig,
    DatasourceItem,
    EvalApiError,
    EvalObject,
    EvalRunObject,
    EvalTask,
    GenerationSettings,
    GraderResult,
    MetricCriterion,
    MetricInterval,
    OutputItemObject,
    PerModelUsage,
    PerTestingCriteriaResult,
    ResultCounts,
    RunDataSource,
    RunRequest,
    RunStatusName,
    Sample,
    SampleUsage,
    StringCheckCriterion,
    TestingCriterion,
)
from evals.runs import EVERYONE, EvalRun, RunStatus
from evals.service import Evaluations
from evals.suites import Example, GenerationSpec, Suite

STATUS_NAMES: dict[RunStatus, RunStatusName] = {
    RunStatus.QUEUED: "queued",
    RunStatus.RUNNING: "in_progress",
    RunStatus.SUCCEEDED: "completed",
    RunStatus.CANCELED: "canceled",
    RunStatus.FAILED: "failed",
}
STATUSES = {name: status for status, name in STATUS_NAMES.items()}

_MESSAGES = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
        "required": ["role", "content"],
    },
}
DATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "item": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "task": {"type": "string"},
                "messages": _MESSAGES,
                "reference": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "string"}},
                "answer": {"type": "integer"},
            },
            "required": ["id", "task", "messages", "reference"],
        },
        "sample": {
            "type": "object",
            "properties": {"output_text": {"type": "string"}, "choice": {"type": "integer"}},
            "required": ["output_text"],
        },
    },
    "required": ["item", "sample"],
}


def _timestamp(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _criterion(task: str, metric: str) -> TestingCriterion:
    name = f"{task}/{metric}"
    if metric == "exact_match":
        return StringCheckCriterion(name=name)
    known = BUILT_IN.get(metric)
    return MetricCriterion(
        name=name,
        metric=metric,
        pass_threshold=1.0 if metric in GRADING else None,
        higher_is_better=known.higher_is_better if known else True,
    )


def run_not_found(eval_id: str, run_id: str, param: str = "run_id") -> EvalsError:
    return EvalsError(
        ErrorCode.NOT_FOUND,
        f"no run {run_id!r} of eval {eval_id!r} for this API key; GET /v1/evals/{eval_id}/runs "
        "lists its runs",
        param=param,
        api_code="eval_run_not_found",
    )


def output_item_not_found(run_id: str, item_id: str) -> EvalsError:
    return EvalsError(
        ErrorCode.NOT_FOUND,
        f"run {run_id} has no output item {item_id!r}; output items exist once a run "
        "completes, and its output_items list names them",
        param="output_item_id",
        api_code="output_item_not_found",
    )


def model_not_found(model: str, why: str) -> EvalsError:
    return EvalsError(
        ErrorCode.NOT_FOUND,
        f"The model `{model}` does not exist: {why}",
        param="data_source.model",
        api_code="model_not_found",
    )


class EvalHandlers:
    def __init__(self, evaluations: Evaluations, catalog: SuiteCatalog, background: BackgroundRuns):
        self.evaluations = evaluations
        self.catalog = catalog
        self.background = background
        self._lock = threading.Lock()
        self._outputs: OrderedDict[tuple[str, str], list[dict[str, Any]]] = OrderedDict()
        self._indexes: OrderedDict[str, tuple[dict[str, Example], dict[str, GenerationSpec]]] = (
            OrderedDict()
        )

    @classmethod
    def create(cls, evaluations: Evaluations) -> "EvalHandlers":
        settings = evaluations.settings
        return cls(
            evaluations,
            SuiteCatalog(settings.suites_dir),
            BackgroundRuns(
                evaluations,
                settings.max_running_runs,
                settings.max_queued_runs,
                max_queued_per_key=settings.queued_runs_per_key,
            ),
        )

    @property
    def runs(self):
        return self.evaluations.runs

    # -- evals -------------------------------------------------------------------------------

    def list_evals(
        self, caller: Caller, *, after: str | None = None, limit: int = 20, order: str = "asc"
    ) -> ListPage[EvalObject]:
        found = sorted(self.catalog.suites(), key=lambda s: (s.modified_at, s.id))
        if order == "desc":
            found.reverse()
        if after is not None:
            ids = [s.id for s in found]
            if after not in ids:
                raise eval_not_found(after, param="after")
            found = found[ids.index(after) + 1 :]
        return page([self._eval(s) for s in found[: limit + 1]], limit, lambda e: e.id)

    def get_eval(self, caller: Caller, eval_id: str) -> EvalObject:
        return self._eval(self.catalog.get(eval_id))

    def _eval(self, entry: CatalogSuite) -> EvalObject:
        suite = entry.suite
        tasks = [
            EvalTask(
                name=task.name,
                description=task.spec.description,
                examples=len(task.examples),
                metrics=list(task.spec.metrics),
                generation=GenerationSettings(**task.spec.generation.model_dump()),
            )
            for task in suite.tasks
        ]
        return EvalObject(
            id=entry.id,
            name=suite.name,
            created_at=int(entry.modified_at.timestamp()),
            data_source_config=CustomDataSourceConfig(schema=DATA_SCHEMA),
            testing_criteria=[
                _criterion(task.name, metric)
                for task in suite.tasks
                for metric in task.spec.metrics
            ],
            metadata=None,
            description=suite.spec.description,
            digest=suite.digest,
            tasks=tasks,
        )

    # -- runs --------------------------------------------------------------------------------

    def create_run(self, caller: Caller, eval_id: str, body: RunRequest) -> EvalRunObject:
        """Check the model, record the run as queued and hand it to a worker thread."""
        entry = self.catalog.get(eval_id)
        model = body.data_source.model
        if not caller.may_use(model):
            raise EvalsError(
                ErrorCode.PERMISSION_DENIED,
                f"key {caller.name!r} may not use model {model!r}",
                param="data_source.model",
                api_code="model_not_allowed",
            )
        try:
            version = self.evaluations.registry.resolve(model)
        except StackError as err:
            if err.code is ErrorCode.NOT_FOUND:
                raise model_not_found(model, err.message) from None
            raise
        if not caller.sees_model(version.owner):
            raise model_not_found(model, "no model of that name is open to this API key")

        def record() -> EvalRun:
            return self.evaluations.queue(
                entry.suite,
                model,
                version,
                created_by=caller.actor,
                owner=caller.key_id,
                name=body.name or f"{entry.id} on {model}",
                metadata=body.metadata,
            )

        started = self.background.start(record, entry.suite, caller.key_id, caller.name)
        return self._run_object(started, entry.id)

    def list_runs(
        self,
        caller: Caller,
        eval_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: str = "asc",
        status: RunStatusName | None = None,
    ) -> ListPage[EvalRunObject]:
        entry = self.catalog.get(eval_id)
        anchor = None if after is None else self._run(caller, eval_id, after, "after")[0]
        found = self.runs.list_runs(
            limit + 1,
            suite=entry.suite.name,
            owner=EVERYONE if caller.admin else caller.key_id,
            statuses=None if status is None else (STATUSES[status],),
            after=anchor,
            ascending=order == "asc",
        )
        return page([self._run_object(r, entry.id) for r in found], limit, lambda r: r.id)

    def get_run(self, caller: Caller, eval_id: str, run_id: str) -> EvalRunObject:
        run, _ = self._run(caller, eval_id, run_id)
        return self._run_object(run, eval_id)

    def cancel_run(self, caller: Caller, eval_id: str, run_id: str) -> EvalRunObject:
        """Cancel a queued or running run: it stops at its next batch, keeping no outputs."""
        run, _ = self._run(caller, eval_id, run_id)
        if not run.status.active:
            raise EvalsError(
                ErrorCode.INVALID,
                f"run {run_id} already {STATUS_NAMES[run.status]}; only queued or in_progress "
                "runs can be canceled",
                param="run_id",
                api_code="invalid_request",
            )
        if self.runs.cancel(run):
            self.background.stop(run.id)
        return self._run_object(self.runs.get(run.id), eval_id)

    def _run(
        self, caller: Caller, eval_id: str, run_id: str, param: str = "run_id"
    ) -> tuple[EvalRun, CatalogSuite | None]:
        """The run `run_id` of eval `eval_id` when `caller` sees it (404 otherwise), with the
        catalog's suite it ran (None for a suite the catalog does not list, whose name is its
        eval id)."""
        try:
            run = self.runs.get(run_id)
        except StackError as err:
            if err.code is ErrorCode.NOT_FOUND:
                raise run_not_found(eval_id, run_id, param) from None
            raise
        if not caller.sees(run.owner):
            raise run_not_found(eval_id, run_id, param)
        try:
            entry = self.catalog.get(eval_id)
        except EvalsError:
            entry = None
        if entry is not None and run.suite == entry.suite.name:
            return run, entry
        if run.suite != eval_id:
            raise run_not_found(eval_id, run_id, param)
        return run, None

    def _run_object(self, run: EvalRun, eval_id: str) -> EvalRunObject:
        summary = run.summary or {}
        criteria = summary.get("criteria", {})
        usage = []
        if summary:
            usage.append(
                PerModelUsage(
                    model_name=run.version or run.model,
                    invocation_count=summary["answers"],
                    prompt_tokens=None,
                    completion_tokens=summary["completion_tokens"],
                    total_tokens=None,
                )
            )
        progress = None
        if run.status is RunStatus.SUCCEEDED:
            progress = 1.0
        elif run.status.active:
            progress = self.background.progress(run.id)
        error = None
        if run.status is RunStatus.FAILED:
            error = EvalApiError(code="run_failed", message=run.error or "the run failed")
        return EvalRunObject(
            id=run.id,
            eval_id=eval_id,
            name=run.name or f"{eval_id} on {run.version or run.model}",
            status=STATUS_NAMES[run.status],
            model=run.model,
            created_at=int(run.created_at.timestamp()),
            result_counts=ResultCounts(
                total=summary.get("total", 0),
                errored=0,
                failed=summary.get("failed", 0),
                passed=summary.get("passed", 0),
            ),
            per_model_usage=usage,
            per_testing_criteria_results=[
                PerTestingCriteriaResult(testing_criteria=name, **counts)
                for name, counts in criteria.items()
            ],
            data_source=RunDataSource(model=run.model),
            error=error,
            metadata=run.metadata,
            version=run.version,
            suite_digest=run.suite_digest,
            metrics={name: MetricInterval(**value) for name, value in run.metrics.items()},
            progress=progress,
            finished_at=_timestamp(run.finished_at),
        )

    # -- output items ------------------------------------------------------------------------

    def list_output_items(
        self,
        caller: Caller,
        eval_id: str,
        run_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: str = "asc",
        status: str | None = None,
    ) -> ListPage[OutputItemObject]:
        """A finished run's examples, in the run's order; none before it completes."""
        run, entry = self._run(caller, eval_id, run_id)
        records = list(enumerate(self._outputs_of(run)))
        if order == "desc":
            records.reverse()
        if after is not None:
            position = self._position(run, after, len(records))
            records = [(n, r) for n, r in records if (n > position) == (order == "asc")]
        items = []
        for n, record in records:
            item = self._item(eval_id, entry, run, n, record)
            if status is None or item.status == status:
                items.append(item)
                if len(items) > limit:
                    break
        return page(items, limit, lambda i: i.id)

    def get_output_item(
        self, caller: Caller, eval_id: str, run_id: str, item_id: str
    ) -> OutputItemObject:
        run, entry = self._run(caller, eval_id, run_id)
        records = self._outputs_of(run)
        n = self._position(run, item_id, len(records))
        return self._item(eval_id, entry, run, n, records[n])

    @staticmethod
    def _item_id(run: EvalRun, n: int) -> str:
        return f"outputitem-{run.id.removeprefix('evalrun-')}-{n}"

    def _position(self, run: EvalRun, item_id: str, count: int) -> int:
        found = re.fullmatch(r"outputitem-([0-9a-f]{24})-([0-9]{1,9})", item_id)
        if found is None or f"evalrun-{found[1]}" != run.id or int(found[2]) >= count:
            raise output_item_not_found(run.id, item_id)
        return int(found[2])

    def _outputs_of(self, run: EvalRun) -> list[dict[str, Any]]:
        """The per-example records of a completed run (the last few read are kept)."""
        if run.status is not RunStatus.SUCCEEDED or run.examples_digest is None:
            return []
        key = (run.id, run.examples_digest)
        with self._lock:
            if key in self._outputs:
                self._outputs.move_to_end(key)
                return self._outputs[key]
        records = self.runs.examples(run)
        with self._lock:
            self._outputs[key] = records
            while len(self._outputs) > 4:
                self._outputs.popitem(last=False)
        return records

    def _item(
        self,
        eval_id: str,
        entry: CatalogSuite | None,
        run: EvalRun,
        n: int,
        record: dict[str, Any],
    ) -> OutputItemObject:
        # The suite as scored, when its file has not changed since: generation settings and
        # the choices of choice rows, which the records do not keep.
        example, generation = None, None
        if entry is not None and entry.suite.digest == run.suite_digest:
            examples, generations = self._index(entry.suite)
            example = examples.get(record["id"])
            generation = generations.get(record["task"])
        results = [
            GraderResult(
                name=name,
                type="string_check" if metric == "exact_match" else "metric",
                score=score,
                passed=passed,
            )
            for name, metric, score, passed in example_results(record)
        ]
        answered = "completion_tokens" in record
        messages = [ChatMessage(role=m["role"], content=m["content"]) for m in record["messages"]]
        return OutputItemObject(
            id=self._item_id(run, n),
            run_id=run.id,
            eval_id=eval_id,
            created_at=int(run.created_at.timestamp()),
            status="pass" if all(r.passed for r in results) else "fail",
            datasource_item_id=n,
            datasource_item=DatasourceItem(
                id=record["id"],
                task=record["task"],
                messages=messages,
                reference=record["reference"],
                choices=list(example.choices) if example and example.choices else None,
                answer=example.answer if example else None,
            ),
            results=results,
            sample=Sample(
                input=messages,
                output=[ChatMessage(role="assistant", content=record.get("prediction") or "")],
                model=run.version or run.model,
                max_completion_tokens=generation.max_tokens if generation else None,
                temperature=generation.temperature if generation else None,
                usage=SampleUsage(
                    prompt_tokens=None,
                    completion_tokens=int(record["completion_tokens"]),
                    total_tokens=None,
                )
                if answered
                else None,
                latency_s=record.get("latency_s"),
            ),
            scores={name: float(value) for name, value in record["scores"].items()},
        )

    def _index(self, suite: Suite) -> tuple[dict[str, Example], dict[str, GenerationSpec]]:
        """A suite's examples by id and generation settings by task (the last few kept)."""
        with self._lock:
            found = self._indexes.get(suite.digest)
        if found is None:
            found = (
                {example.id: example for task in suite.tasks for example in task.examples},
                {task.name: task.spec.generation for task in suite.tasks},
            )
            with self._lock:
                self._indexes[suite.digest] = found
                while len(self._indexes) > 8:
                    self._indexes.popitem(last=False)
        return found

    # -- the gateway's start and stop --------------------------------------------------------

    def recover(self) -> list[EvalRun]:
        return self.evaluations.recover()

    def close(self) -> None:
        self.background.close()
