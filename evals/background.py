"""Runs started over HTTP, scored in the gateway's process on worker threads: never tied to
the request that started them (a client may disconnect; the run goes on), at most
`max_running` at once, and at most `max_queued` more waiting their turn; beyond that,
starting a run is refused (429) until one finishes."""

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from core.errors import ErrorCode
from evals.errors import EvalsError
from evals.runs import EvalRun
from evals.service import Evaluations, RunStopped, Watch
from evals.suites import Suite

log = logging.getLogger(__name__)


@dataclass
class _Running:
    watch: Watch
    future: Future | None = None


class BackgroundRuns:
    def __init__(self, evaluations: Evaluations, max_running: int, max_queued: int):
        self.evaluations = evaluations
        self.capacity = max_running + max_queued
        self._pool = ThreadPoolExecutor(max_running, thread_name_prefix="eval-run")
        self._lock = threading.Lock()
        self._runs: dict[str, _Running] = {}
        self._closed = False

    def start(self, record: Callable[[], EvalRun], suite: Suite) -> EvalRun:
        """Record a queued run (`record`) and hand it to a worker; 429 when this process has
        as many runs as it takes running or waiting, 503 once it is stopping."""
        with self._lock:
            if self._closed:
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
            run = record()
            held = _Running(Watch(self.evaluations.runs, run.id))
            self._runs[run.id] = held
            held.future = self._pool.submit(self._execute, run, suite, held.watch)
        return run

    def _execute(self, run: EvalRun, suite: Suite, watch: Watch) -> None:
        try:
            self.evaluations.execute(run, suite, watch)
        except RunStopped:
            log.info("evaluation run %s stopped before it finished", run.id)
        except Exception:
            log.warning("evaluation run %s failed", run.id, exc_info=True)
        finally:
            with self._lock:
                self._runs.pop(run.id, None)

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
        """Stop: fail every run of this process not finished (running or queued), with the
        reason, and tell their workers to stop; nothing waits for them."""
        with self._lock:
            self._closed = True
            held = dict(self._runs)
        for run_id, running in held.items():
            run = self.evaluations.runs.get(run_id)
            self.evaluations.runs.fail(
                run, "the gateway stopped before the run finished; start the run again"
            )
            running.watch.stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
