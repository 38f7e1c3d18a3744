"""Job state in the stack's database: jobs of every kind, their events and checkpoints (the
files uploaded for them are in `finetune.files`).

Every status change is a conditional update (`... WHERE status = expected`), so a worker, a
canceller and a recovering restart never overwrite each other's decision. A running job is
leased (`core.leases`) by its worker, and everything that worker writes is fenced by the
lease's epoch (`JobStore.under`): a worker whose job was taken over changes nothing more."""

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Row, func, insert, select, update

from core.database import as_utc, open_database, reading, utc_now
from core.leases import Lease, LeaseLost, Leases
from finetune.tables import CHAIN, checkpoints, events, jobs


class JobStatus(StrEnum):
    """OpenAI's fine-tuning job statuses (files are validated before a job is created)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class Job:
    id: str
    kind: str  # what the worker runs: a key of `finetune.kinds.JOB_KINDS`
    created_at: datetime
    created_by: str
    status: JobStatus
    model: str
    suffix: str | None
    recipe: dict[str, Any]
    hyperparameters: dict[str, Any]
    attempts: int
    training_file: str | None = None
    validation_file: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    fine_tuned_model: str | None = None
    registered_version: str | None = None
    error: dict[str, Any] | None = None
    pid: int | None = None
    host: str | None = None
    pid_start: int | None = None
    lease_owner: str | None = None  # the worker holding the job (core.leases)
    lease_until: datetime | None = None
    lease_epoch: int = 0
    run_seconds: float = 0.0  # trained by the attempts that ended
    trained_tokens: int | None = None
    metrics: dict[str, float] | None = None
    owner: str | None = None  # the API key that created it
    metadata: dict[str, str] | None = None  # the client's key-value labels


@dataclass(frozen=True)
class JobEvent:
    id: int
    job_id: str
    created_at: datetime
    level: str
    message: str
    data: dict[str, Any] | None


@dataclass(frozen=True)
class Checkpoint:
    id: str
    job_id: str
    created_at: datetime
    step: int
    path: str
    metrics: dict[str, float]


_DATES = ("created_at", "started_at", "finished_at", "lease_until")


def _job(row: Row) -> Job:
    values = dict(row._mapping)
    del values["heartbeat_at"]  # unused since the lease took its place
    for key in _DATES:
        values[key] = as_utc(values[key])
    values["status"] = JobStatus(values["status"])
    return Job(**values)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class JobStore:
    """Jobs, events and checkpoints on SQLAlchemy (SQLite or PostgreSQL). A store `under` a
    worker's lease writes events and checkpoints only while that lease holds the job."""

    def __init__(self, engine: Engine, lease: Lease | None = None):
        self.engine = engine
        self.leases = Leases(engine, jobs)
        self.lease = lease

    @classmethod
    def open(cls, url: str) -> "JobStore":
        return cls(open_database(url, CHAIN))

    def under(self, lease: Lease) -> "JobStore":
        """This store, its writes fenced by `lease`: `LeaseLost` once another worker holds
        the job, or it left `running`."""
        return JobStore(self.engine, lease)

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            # A fenced no-op update locks the job's row until this write commits, so a
            # takeover either waits for it or has already made it fail.
            if self.lease is not None and not self.leases.transition(
                self.lease, conn=conn, lease_owner=self.lease.owner
            ):
                raise LeaseLost(self.lease.item_id)
            yield conn

    # -- jobs -----------------------------------------------------------------------------

    def create(
        self,
        *,
        kind: str,
        model: str,
        recipe: dict[str, Any],
        created_by: str,
        suffix: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        training_file: str | None = None,
        validation_file: str | None = None,
        owner: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Job:
        job_id = new_id("ftjob")
        with self.engine.begin() as conn:
            conn.execute(
                insert(jobs).values(
                    id=job_id,
                    kind=kind,
                    created_at=utc_now(),
                    created_by=created_by,
                    status=JobStatus.QUEUED.value,
                    model=model,
                    suffix=suffix,
                    recipe=recipe,
                    hyperparameters=hyperparameters or {},
                    training_file=training_file,
                    validation_file=validation_file,
                    attempts=0,
                    owner=owner,
                    metadata=metadata,
                )
            )
        self.add_event(job_id, f"Created fine-tuning job: {job_id}")
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        with reading(self.engine) as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        limit: int | None = None,
        after: str | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        """Newest first, of one owner if given; `after` is the id of the last job of the
        previous page."""
        query = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        if after is not None:
            anchor = self.get(after)
            if anchor is not None:
                query = query.where(
                    (jobs.c.created_at < anchor.created_at)
                    | ((jobs.c.created_at == anchor.created_at) & (jobs.c.id < anchor.id))
                )
        if limit is not None:
            query = query.limit(limit)
        with reading(self.engine) as conn:
            return [_job(row) for row in conn.execute(query)]

    def count_active_jobs(self, owner: str | None) -> int:
        """Queued and running jobs of `owner` (of everyone for None)."""
        query = select(func.count()).where(
            jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value])
        )
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with reading(self.engine) as conn:
            return conn.execute(query).scalar_one()

    def count_by_status(self) -> dict[tuple[str, JobStatus], int]:
        """How many jobs of each kind are in each status (those with none left out)."""
        query = select(jobs.c.kind, jobs.c.status, func.count()).group_by(
            jobs.c.kind, jobs.c.status
        )
        with reading(self.engine) as conn:
            return {(kind, JobStatus(status)): n for kind, status, n in conn.execute(query)}

    def transition(
        self,
        job_id: str,
        expected: tuple[JobStatus, ...],
        status: JobStatus,
        *where: ColumnElement[bool],
        lease: Lease | None = None,
        **values: Any,
    ) -> bool:
        """Move a job to `status` (with other column values) if it is in one of `expected`
        (and matches `where`), and, with `lease`, only while that lease holds it. A job that
        leaves `running` gives up its lease: what its worker still writes is refused."""
        if status.finished:
            values.setdefault("finished_at", utc_now())
        if status is not JobStatus.RUNNING:
            values.update(lease_owner=None, lease_until=None, lease_epoch=jobs.c.lease_epoch + 1)
        where += (jobs.c.id == job_id, jobs.c.status.in_([s.value for s in expected]))
        if lease is not None:
            where += (self.leases.fence(lease),)
        with self.engine.begin() as conn:
            result = conn.execute(update(jobs).where(*where).values(status=status.value, **values))
        return result.rowcount == 1

    def claim(
        self, job_id: str, owner: str, ttl: timedelta, *, pid: int, host: str, pid_start: int | None
    ) -> tuple[Job, Lease] | None:
        """Lease the queued job to worker `owner` for `ttl` and mark it running, counting the
        attempt; `pid` on `host` (started `pid_start` clock ticks after boot, which tells it
        apart from a later process with its pid) lets a runner on that host see it die. None
        if the job is not queued, or another worker holds it."""
        queued = jobs.c.status == JobStatus.QUEUED.value
        lease = self.leases.acquire(job_id, owner, ttl, queued)
        if lease is None:
            return None
        started = self.leases.transition(
            lease,
            queued,
            status=JobStatus.RUNNING.value,
            pid=pid,
            host=host,
            pid_start=pid_start,
            started_at=func.coalesce(jobs.c.started_at, utc_now()),
            attempts=jobs.c.attempts + 1,
        )
        return (self.get(job_id), lease) if started else None

    def renew(self, lease: Lease, ttl: timedelta) -> Lease:
        """`LeaseLost` when the job was taken over, cancelled or otherwise left `running`."""
        return self.leases.renew(lease, ttl)

    def take_back(
        self, job: Job, status: JobStatus, *, expired_at: datetime | None, **values: Any
    ) -> bool:
        """running -> `status` for a job whose worker is gone, as long as it is the worker
        `job` was read with (same epoch) and, with `expired_at`, its lease had run out by then
        (a worker that renewed since keeps its job)."""
        where = [jobs.c.lease_epoch == job.lease_epoch]
        if expired_at is not None:
            where.append(self.leases.free(expired_at))
        return self.transition(job.id, (JobStatus.RUNNING,), status, *where, **values)

    def update(self, job_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))

    # -- events and checkpoints -----------------------------------------------------------

    def add_event(
        self, job_id: str, message: str, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        with self._writing() as conn:
            conn.execute(
                insert(events).values(
                    job_id=job_id, created_at=utc_now(), level=level, message=message, data=data
                )
            )

    def list_events(
        self, job_id: str, *, limit: int | None = None, after: int | None = None
    ) -> list[JobEvent]:
        """Newest first, as OpenAI lists them; `after` is the id of the last event seen."""
        query = select(events).where(events.c.job_id == job_id).order_by(events.c.id.desc())
        if after is not None:
            query = query.where(events.c.id < after)
        if limit is not None:
            query = query.limit(limit)
        with reading(self.engine) as conn:
            return [
                JobEvent(r.id, r.job_id, as_utc(r.created_at), r.level, r.message, r.data)
                for r in conn.execute(query)
            ]

    def add_checkpoint(self, job_id: str, step: int, path: str, metrics: dict[str, float]) -> None:
        with self._writing() as conn:
            conn.execute(
                insert(checkpoints).values(
                    id=new_id("ftckpt"),
                    job_id=job_id,
                    created_at=utc_now(),
                    step=step,
                    path=path,
                    metrics=metrics,
                )
            )

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """Newest first."""
        query = (
            select(checkpoints)
            .where(checkpoints.c.job_id == job_id)
            .order_by(checkpoints.c.step.desc())
        )
        with reading(self.engine) as conn:
            return [
                Checkpoint(r.id, r.job_id, as_utc(r.created_at), r.step, r.path, r.metrics)
                for r in conn.execute(query)
            ]
