"""Runs started over HTTP, scored in the gateway's process on worker threads: never tied to
the request that started them (a client may disconnect; the run goes on), at most
`max_running` at once, and at most `max_queued` more waiting their turn, of which one API key
may have at most `max_queued_per_key` (so that one key cannot hold the queue); beyond that,
starting a run is refused (429) until one finishes.

Each run is leased to this process (`core.leases`) and its lease renewed every `poll_s`;
its worker stores each example's answer (or log-likelihood) as its batch finishes. A run
whose process stopped (its lease ran out, or was released by a clean stop) is taken over by
any gateway with room, which goes on after the examples already scored; a worker whose run
was taken over stops, and what it still tries to write is refused."""

import asyncio
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from core.errors import ErrorCode, StackError
from core.leases import LeaseLost
from evals.errors import EvalsError
from evals.loading import load_version
from evals.runs import EvalRun, RunStatus, RunStore, this_worker
from evals.service import Evaluations, RunStopped, Watch
from evals.suites import Suite, load_suite
from evals.targets import Answer, InProcessTarget, Progress, Target

log = logging.getLogger(__name__)


@dataclass
class _Running:
    run: EvalRun  # as leased: its epoch fences the worker's writes
    watch: Watch
    future: Future | None = None


class Resumed(Target):
    """A run's target that keeps each example's output as its batch finishes, and gives back
    those an earlier worker of the run kept instead of scoring them again. Outputs are kept
    by place (the target's call number in the run, the example's index in the call): a
    suite (checked by digest) always makes the same calls in the same order."""

    def __init__(self, target: Target, runs: RunStore, run: EvalRun, batch_size: int):
        self.target = target
        self.label = target.label
        self.version_ref = target.version_ref
        self.runs = runs
        self.run = run
        self.batch_size = batch_size
        self.kept = runs.progress(run)
        self.calls = 0

    async def answer(self, prompts, generation, progress) -> list[Answer]:
        outputs = await self._each(
            prompts,
            lambda chunk: self.target.answer(chunk, generation, progress),
            lambda answer: asdict(answer),
            progress,
        )
        return [Answer(**output) for output in outputs]

    async def loglik(self, prompts, continuations, progress) -> list[tuple[float, int]]:
        def score(pairs: list[tuple[Any, str]]) -> Awaitable[list[tuple[float, int]]]:
            return self.target.loglik([p for p, _ in pairs], [c for _, c in pairs], progress)

        pairs = list(zip(prompts, continuations, strict=True))
        outputs = await self._each(pairs, score, list, progress)
        return [(logprob, tokens) for logprob, tokens in outputs]

    async def _each(
        self,
        items: list[Any],
        score: Callable[[list[Any]], Awaitable[list[Any]]],
        encode: Callable[[Any], Any],
        progress: Progress,
    ) -> list[Any]:
        call = self.calls
        self.calls += 1
        slots = [f"{call}:{i}" for i in range(len(items))]
        if kept := [slot for slot in slots if slot in self.kept]:
            progress(len(kept))
        missing = [i for i, slot in enumerate(slots) if slot not in self.kept]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            scored = await score([items[i] for i in chunk])
            outputs = {slots[i]: encode(output) for i, output in zip(chunk, scored, strict=True)}
            await asyncio.to_thread(self.runs.record, self.run, outputs)
            self.kept.update(outputs)
        return [self.kept[slot] for slot in slots]


class BackgroundRuns:
    def __init__(
        self,
        evaluations: Evaluations,
        max_running: int,
        max_queued: int,
        *,
        max_queued_per_key: int | None = None,
        lease_s: float = 60.0,
        poll_s: float = 5.0,
    ):
        self.evaluations = evaluations
        self.runs = evaluations.runs
        self.capacity = max_running + max_queued
        self.max_queued_per_key = max_queued_per_key or max(1, max_queued // 2)
        self.lease = timedelta(seconds=lease_s)
        self.poll_s = poll_s
        self.worker = f"{this_worker()}:{uuid.uuid4().hex[:12]}"
        self._pool = ThreadPoolExecutor(max_running, thread_name_prefix="eval-run")
        self._lock = threading.Lock()
        self._runs: dict[str, _Running] = {}
        self._closed = threading.Event()
        self._tending = threading.Thread(target=self._tend, name="eval-leases", daemon=True)
        self._tending.start()

    def start(
        self,
        record: Callable[[], EvalRun],
        suite: Suite,
        owner: str | None = None,
        owner_name: str = "anonymous",
    ) -> EvalRun:
        """Record a queued run (`record`) of the key `owner`, lease it and hand it to a
        worker; 429 when this process has as many runs as it takes running or waiting, or
        the key as many waiting as one key may; 503 once it is stopping."""
        with self._lock:
            if self._closed.is_set():
                raise EvalsError(
                    ErrorCode.UNAVAILABLE,
                    "the gateway is stopping; start the run again once it is back",
                    api_code="gateway_stopping",
                )
            if len(self._runs) >= self.capacity:
                raise EvalsError(
                    ErrorCode.RATE_LIMITED,
                    f"this gateway already has {len(self._runs)} evaluation runs running or "
                    "queued, as many as it takes; start this one when one of them finishes "
                    "(or cancel one)",
                    api_code="too_many_eval_runs",
                    headers={"Retry-After": "10"},
                )
            waiting = sum(
                1
                for held in self._runs.values()
                if held.run.owner == owner and not (held.future and held.future.running())
            )
            if waiting >= self.max_queued_per_key:
                raise EvalsError(
                    ErrorCode.RATE_LIMITED,
                    f"key {owner_name!r} already has {waiting} evaluation runs waiting for a "
                    f"worker, as many as one key may (max_queued_runs_per_key: "
                    f"{self.max_queued_per_key}); start this one when one of them starts or "
                    "finishes (or cancel one)",
                    api_code="too_many_eval_runs_for_key",
                    headers={"Retry-After": "10"},
                )
            run = self.runs.acquire(record().id, self.worker, self.lease)
            assert run is not None  # a new run, free until now
            self._submit(run, suite)
        return run

    def _submit(self, run: EvalRun, suite: Suite) -> None:
        held = _Running(run, Watch(self.runs, run.id))
        self._runs[run.id] = held
        held.future = self._pool.submit(self._execute, run, suite, held.watch)

    def _execute(self, run: EvalRun, suite: Suite, watch: Watch) -> None:
        try:
            self._score(run, suite, watch)
        except RunStopped:
            log.info("evaluation run %s stopped before it finished", run.id)
        except LeaseLost:
            log.info("evaluation run %s was taken over by another worker", run.id)
        except Exception:
            log.warning("evaluation run %s failed", run.id, exc_info=True)
        finally:
            with self._lock:
                self._runs.pop(run.id, None)

    def _score(self, run: EvalRun, suite: Suite, watch: Watch) -> None:
        """Load the run's version (a copy of its own), score it from where its last worker
        stopped, record the outcome. A run cancelled while it waited is left as it is."""
        started = self.runs.start(run) if run.status is RunStatus.QUEUED else run
        if started is None:
            return
        assert started.version is not None
        try:
            watch.check()
            loaded = load_version(self.evaluations.registry, started.version)
        except RunStopped:
            raise
        except BaseException as err:
            message = err.message if isinstance(err, StackError) else type(err).__name__
            if not isinstance(err, StackError):
                log.error("loading %s for run %s failed", started.version, run.id, exc_info=err)
            self.runs.fail(started, f"the model could not be loaded: {message}")
            raise
        batch_size = self.evaluations.settings.batch_size
        target = InProcessTarget(loaded.model, loaded.tokenizer, loaded.version.ref, batch_size)
        resumed = Resumed(target, self.runs, started, batch_size)
        self.evaluations.score(
            started, suite, resumed, progress=False, watch=watch, expose_errors=False
        )

    def _tend(self) -> None:
        """Every `poll_s`: renew the leases of this process's runs (a run taken over stops),
        and take over the runs whose worker stopped, as many as there is room for."""
        while not self._closed.wait(self.poll_s):
            try:
                self._renew()
                self._take_over()
            except Exception:
                log.exception("tending evaluation runs failed; trying again later")

    def _renew(self) -> None:
        with self._lock:
            held = list(self._runs.values())
        for running in held:
            try:
                running.run = self.runs.renew(running.run, self.lease)
            except LeaseLost:
                log.warning("evaluation run %s was taken over; its worker stops", running.run.id)
                running.watch.stop.set()

    def _take_over(self) -> None:
        with self._lock:
            room = self.capacity - len(self._runs)
            if room <= 0 or self._closed.is_set():
                return
            for run in self.runs.take_over(self.worker, self.lease, room):
                suite = self._suite(run)
                if suite is None:
                    self.runs.fail(
                        run,
                        f"the suite {run.suite!r} changed or is gone since the run started; "
                        "start the run again",
                    )
                    continue
                log.info("taking over evaluation run %s", run.id)
                self._submit(run, suite)

    def _suite(self, run: EvalRun) -> Suite | None:
        """The suite a run scores, found by name or else among the suites, by its digest."""
        folder = self.evaluations.settings.suites_dir
        for reference in (run.suite, *sorted(str(p) for p in folder.glob("*.yaml"))):
            try:
                suite = load_suite(reference, folder)
            except StackError:
                continue
            if suite.digest == run.suite_digest:
                return suite
        return None

    def progress(self, run_id: str) -> float | None:
        """The share of a run's work done, for runs of this process (None for others)."""
        held = self._runs.get(run_id)
        return None if held is None else held.watch.fraction

    def stop(self, run_id: str) -> None:
        """Tell the worker of a run (of this process) to stop at its next batch."""
        held = self._runs.get(run_id)
        if held is not None:
            held.watch.stop.set()

    @property
    def active(self) -> int:
        return len(self._runs)

    def close(self) -> None:
        """Stop: give up the leases of this process's runs (running or queued), so that the
        next gateway goes on with them at once, and tell their workers to stop; nothing
        waits for them."""
        with self._lock:
            self._closed.set()
            held = dict(self._runs)
        for running in held.values():
            self.runs.release(running.run)
            running.watch.stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
