"""Evaluation runs: their records (`evals_runs`) and per-example outputs (JSONL artifacts).

A run is `queued` (started over HTTP, waiting for a worker thread), `running`, then
`succeeded`, `failed` or `canceled`. Every change of status is a conditional update from an
active status, so a run that was cancelled stays so whatever its worker does next.

A run started over HTTP is leased (`core.leases`) by the worker that runs it, and every
change its worker makes (starting it, what it scored so far, its outcome) is fenced by the
lease's epoch: a worker whose lease another one took over writes nothing more. A run whose
worker stopped is taken over when its lease runs out (at once after a clean stop) and goes
on after the examples already scored (`record`, `progress`). A run of the command line
records its process (`worker`: host, pid and the pid's start time) instead, so that a later
process can fail a run whose process died."""

import json
import os
import secrets
import socket
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, and_, func, or_, select

from core.database import as_utc, open_database, reading, utc_now
from core.digests import file_digest
from core.errors import ErrorCode
from core.leases import Lease, LeaseLost, Leases
from evals.errors import EvalsError
from evals.tables import CHAIN, run_progress, runs
from finetune.runner import process_alive, process_start


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def active(self) -> bool:
        return self in ACTIVE


ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
_ACTIVE_VALUES = tuple(s.value for s in ACTIVE)


class _Everyone:
    """`owner=EVERYONE`: runs of every owner (None is the runs no key owns)."""


EVERYONE = _Everyone()


def this_worker() -> str:
    """This process, as a run records it: host, pid and the pid's start time."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start(pid) or 0}"


def worker_gone(worker: str | None) -> bool:
    """Whether the process `worker` names is known to have stopped: it ran on this host and
    no process with its pid and start time runs now. A process on another host may be
    alive; a run recorded before runs named their process (None) is not."""
    if worker is None:
        return True
    host, _, rest = worker.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    known = int(started) if started.isdigit() and int(started) > 0 else None
    return not process_alive(int(pid), known)


@dataclass(frozen=True)
class EvalRun:
    id: str
    suite: str
    suite_digest: str
    model: str
    version: str | None
    target: str
    status: RunStatus
    created_by: str
    created_at: datetime
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    examples_path: str | None = None
    examples_digest: str | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    error: str | None = None
    owner: str | None = None  # the API key that started it over HTTP
    worker: str | None = None  # the process that runs it (see `this_worker`)
    name: str | None = None
    metadata: dict[str, str] | None = None
    summary: dict[str, Any] | None = None  # see `evals.grading.summarize`
    lease_owner: str | None = None  # the worker holding it, for a run started over HTTP
    lease_until: datetime | None = None
    lease_epoch: int = 0  # 0: never leased (a run of the command line)

    @property
    def lease(self) -> Lease:
        """The lease this record was read under: its writes are fenced by its epoch."""
        assert self.lease_owner is not None and self.lease_until is not None
        return Lease(self.id, self.lease_owner, self.lease_epoch, self.lease_until)


def _run(row: Row) -> EvalRun:
    values = dict(row._mapping)
    values["status"] = RunStatus(values["status"])
    values["created_at"] = as_utc(values["created_at"])
    values["finished_at"] = as_utc(values["finished_at"])
    values["lease_until"] = as_utc(values["lease_until"])
    return EvalRun(**values)


def run_not_found(run_id: str) -> EvalsError:
    return EvalsError(
        ErrorCode.NOT_FOUND,
        f"no evaluation run {run_id!r}; `llm-evals list` shows the runs",
        param="run_id",
        api_code="eval_run_not_found",
    )


class RunStore:
    def __init__(self, engine: Engine, home: Path):
        self.engine = engine
        self.home = home
        self.leases = Leases(engine, runs)

    @classmethod
    def open(cls, url: str, home: Path) -> "RunStore":
        return cls(open_database(url, CHAIN), home)

    def create(
        self, *, suite: str, suite_digest: str, model: str, version: str | None, target: str,
        created_by: str, status: RunStatus = RunStatus.RUNNING, owner: str | None = None,
        name: str | None = None, metadata: dict[str, str] | None = None,
    ) -> EvalRun:  # fmt: skip
        """Record a run, `running` in this process (or `queued` for a worker thread)."""
        run = EvalRun(
            id=f"evalrun-{secrets.token_hex(12)}",
            suite=suite,
            suite_digest=suite_digest,
            model=model,
            version=version,
            target=target,
            status=status,
            created_by=created_by,
            created_at=utc_now(),
            owner=owner,
            worker=this_worker(),
            name=name,
            metadata=metadata,
        )
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(**{**run.__dict__, "status": run.status.value}))
        return run

    def acquire(self, run_id: str, worker: str, ttl: timedelta) -> EvalRun | None:
        """Lease the active run `run_id` to `worker` for `ttl`; None if another worker holds it
        or it finished."""
        lease = self.leases.acquire(run_id, worker, ttl, runs.c.status.in_(_ACTIVE_VALUES))
        return None if lease is None else self.get(run_id)

    def take_over(self, worker: str, ttl: timedelta, limit: int) -> list[EvalRun]:
        """Lease to `worker` up to `limit` active runs whose worker stopped (their lease ran
        out or was released), oldest first: runs of the command line are not leased."""
        leases = self.leases.acquire_free(
            worker,
            ttl,
            runs.c.status.in_(_ACTIVE_VALUES),
            runs.c.lease_epoch > 0,
            limit=limit,
        )
        return [self.get(lease.item_id) for lease in leases]

    def renew(self, run: EvalRun, ttl: timedelta) -> EvalRun:
        """`LeaseLost` when another worker took the run over: stop scoring it."""
        lease = self.leases.renew(run.lease, ttl)
        return replace(run, lease_until=lease.until)

    def release(self, run: EvalRun) -> bool:
        """Give the run up, for another worker to go on with at once."""
        return self.leases.release(run.lease)

    def start(self, run: EvalRun) -> EvalRun | None:
        """queued -> running, under the lease `run` was read with; None when the run is no
        longer queued (cancelled) or was taken over meanwhile."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                runs.update()
                .where(runs.c.id == run.id, runs.c.status == RunStatus.QUEUED.value)
                .where(runs.c.lease_epoch == run.lease_epoch)
                .values(status=RunStatus.RUNNING.value)
            ).rowcount
        return self.get(run.id) if changed else None

    def record(self, run: EvalRun, outputs: dict[str, Any]) -> None:
        """Keep what the run's worker scored (slot -> output), under its lease; `LeaseLost`
        (nothing kept) when another worker took the run over or it stopped."""
        with self.engine.begin() as conn:
            if not self.leases.transition(
                run.lease, runs.c.status == RunStatus.RUNNING.value, conn=conn,
                lease_owner=run.lease_owner,
            ):  # fmt: skip
                raise LeaseLost(run.id)
            conn.execute(
                run_progress.insert(),
                [{"run_id": run.id, "slot": k, "output": v} for k, v in outputs.items()],
            )

    def progress(self, run: EvalRun) -> dict[str, Any]:
        """What the run's workers scored so far (slot -> output)."""
        query = select(run_progress.c.slot, run_progress.c.output).where(
            run_progress.c.run_id == run.id
        )
        with reading(self.engine) as conn:
            return {row.slot: row.output for row in conn.execute(query)}

    def succeed(
        self,
        run: EvalRun,
        metrics: dict[str, dict[str, float]],
        examples: list[dict[str, Any]],
        summary: dict[str, Any] | None = None,
    ) -> EvalRun:
        """Store the per-example outputs (written in full before the record points at them),
        then the metrics. A run cancelled or taken over meanwhile is left as it is, and these
        outputs are not kept (each lease writes its own file)."""
        name = f"{run.id}-{run.lease_epoch}" if run.lease_epoch else run.id
        relative = Path("evals") / "runs" / f"{name}.jsonl"
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("w", encoding="utf-8") as f:
            for example in examples:
                f.write(json.dumps(example, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
        finished = utc_now()
        if not self._finish(
            run,
            status=RunStatus.SUCCEEDED.value,
            metrics=metrics,
            summary=summary,
            examples_path=str(relative),
            examples_digest=file_digest(path),
            finished_at=finished,
            seconds=(finished - run.created_at).total_seconds(),
        ):
            path.unlink(missing_ok=True)
        return self.get(run.id)

    def fail(self, run: EvalRun, error: str) -> EvalRun:
        finished = utc_now()
        self._finish(
            run,
            status=RunStatus.FAILED.value,
            error=error,
            finished_at=finished,
            seconds=(finished - run.created_at).total_seconds(),
        )
        return self.get(run.id)

    def cancel(self, run: EvalRun) -> bool:
        """queued or running -> canceled, whoever runs it; False when it had finished."""
        finished = utc_now()
        with self.engine.begin() as conn:
            canceled = conn.execute(
                runs.update()
                .where(runs.c.id == run.id, runs.c.status.in_(_ACTIVE_VALUES))
                .values(
                    status=RunStatus.CANCELED.value,
                    finished_at=finished,
                    seconds=(finished - run.created_at).total_seconds(),
                )
            ).rowcount
            conn.execute(run_progress.delete().where(run_progress.c.run_id == run.id))
        return bool(canceled)

    def _finish(self, run: EvalRun, **values: Any) -> bool:
        """Only an active run finishes, under the lease `run` was read with: a cancelled or
        failed one keeps its status, and a worker whose run was taken over changes nothing.
        Whether it finished."""
        with self.engine.begin() as conn:
            finished = conn.execute(
                runs.update()
                .where(runs.c.id == run.id, runs.c.status.in_(_ACTIVE_VALUES))
                .where(runs.c.lease_epoch == run.lease_epoch)
                .values(**values)
            ).rowcount
            if finished:
                conn.execute(run_progress.delete().where(run_progress.c.run_id == run.id))
        return bool(finished)

    def status(self, run_id: str) -> RunStatus:
        with reading(self.engine) as conn:
            found = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
        if found is None:
            raise run_not_found(run_id)
        return RunStatus(found)

    def recover(self) -> list[EvalRun]:
        """Fail every queued or running run of the command line whose process stopped (see
        `worker_gone`); leased runs are taken over instead (`take_over`)."""
        query = select(runs).where(runs.c.status.in_(_ACTIVE_VALUES), runs.c.lease_epoch == 0)
        with reading(self.engine) as conn:
            active = [_run(row) for row in conn.execute(query)]
        failed = []
        for run in active:
            if not worker_gone(run.worker):
                continue
            if run.worker is None:
                why = "an earlier release of the stack left it unfinished"
            else:
                host, pid = run.worker.split(":")[:2]
                why = f"the process that ran it (pid {pid} on {host}) stopped before it finished"
            failed.append(self.fail(run, f"{why}; start the run again"))
        return failed

    def get(self, run_id: str) -> EvalRun:
        with reading(self.engine) as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise run_not_found(run_id)
        return _run(row)

    def list_runs(
        self,
        limit: int = 100,
        version: str | None = None,
        *,
        suite: str | None = None,
        owner: str | _Everyone | None = EVERYONE,
        statuses: tuple[RunStatus, ...] | None = None,
        after: EvalRun | None = None,
        ascending: bool = False,
    ) -> list[EvalRun]:
        """Runs, newest first (or oldest first), those after the run `after` in that order;
        of one suite, version, owner (None: no key's) or statuses when given."""
        created, ident = runs.c.created_at, runs.c.id
        if ascending:
            query = select(runs).order_by(created.asc(), ident.asc())
        else:
            query = select(runs).order_by(created.desc(), ident.desc())
        if version is not None:
            query = query.where(runs.c.version == version)
        if suite is not None:
            query = query.where(runs.c.suite == suite)
        if not isinstance(owner, _Everyone):
            query = query.where(runs.c.owner == owner)  # (== None is IS NULL)
        if statuses is not None:
            query = query.where(runs.c.status.in_([s.value for s in statuses]))
        if after is not None:
            beyond = (created > after.created_at) if ascending else (created < after.created_at)
            later = (ident > after.id) if ascending else (ident < after.id)
            query = query.where(or_(beyond, and_(created == after.created_at, later)))
        with reading(self.engine) as conn:
            return [_run(row) for row in conn.execute(query.limit(limit))]

    def count_by_status(self) -> dict[RunStatus, int]:
        """How many runs are in each status (those with none left out)."""
        query = select(runs.c.status, func.count()).group_by(runs.c.status)
        with reading(self.engine) as conn:
            return {RunStatus(status): n for status, n in conn.execute(query)}

    def fresh(self, suite_digest: str, version: str) -> EvalRun | None:
        """The newest succeeded run of this very suite on this version, if any."""
        query = (
            select(runs)
            .where(runs.c.suite_digest == suite_digest, runs.c.version == version)
            .where(runs.c.status == RunStatus.SUCCEEDED.value)
            .order_by(runs.c.created_at.desc())
            .limit(1)
        )
        with reading(self.engine) as conn:
            row = conn.execute(query).first()
        return None if row is None else _run(row)

    def examples(self, run: EvalRun) -> list[dict[str, Any]]:
        """The run's per-example outputs, verified against the digest recorded with it."""
        if run.examples_path is None:
            raise EvalsError(
                ErrorCode.CONFLICT, f"run {run.id} is {run.status.value}; it has no outputs"
            )
        path = self.home / run.examples_path
        if not path.is_file() or file_digest(path) != run.examples_digest:
            raise EvalsError(
                ErrorCode.INTEGRITY,
                f"the outputs of run {run.id} are missing or changed since it ran; run the "
                "suite again",
            )
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
