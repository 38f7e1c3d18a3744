"""Batches and their lines on SQLAlchemy (SQLite or PostgreSQL). Each line's result is stored
as it finishes, so a batch resumes after a restart where it stopped. A gateway process holds
a lease (`core.leases`) on each batch it runs: two processes on one database never run the
same batch, and every write of a runner (a line's result, a change of status) is fenced by
its lease's epoch, so a process that lost the lease cannot write over its successor's.

Lines hold requests and results only while their batch runs: the update that ends a batch
(with its output and error files) empties them, since the traffic log (with its redaction and
opt-out) and the files are the only copies kept. `sweep` deletes the lines of batches that
ended before the traffic log's retention, and those whose output or error file was deleted."""

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, insert, or_, select, update

from core.database import as_utc, reading, utc_now
from core.leases import Lease, LeaseLost, Leases
from finetune.tables import files
from serving.tables import batch_lines, batches

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")  # a runner's work
ENDED = ("completed", "failed", "expired", "cancelled")
_DATES = (
    "created_at",
    "expires_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "lease_until",
)


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Batch:
    id: str
    owner: str | None
    endpoint: str
    input_file_id: str
    completion_window: str
    model: str | None
    metadata: dict[str, str] | None
    status: str
    total: int
    created_at: datetime
    expires_at: datetime
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    lease_epoch: int = 0
    in_progress_at: datetime | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    expired_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None


@dataclass(frozen=True)
class Line:
    line: int  # 1-based, as in the input file
    custom_id: str
    body: dict[str, Any]
    status: str = "pending"  # pending, completed or failed
    result: dict[str, Any] | None = field(default=None, compare=False)


def _batch(row: Any) -> Batch:
    values = dict(row._mapping)
    for name in _DATES:
        values[name] = as_utc(values[name])
    return Batch(**values)


class BatchStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.leases = Leases(engine, batches)

    def create(self, batch: Batch, lines: list[Line]) -> Batch:
        with self.engine.begin() as conn:
            conn.execute(insert(batches).values(**batch.__dict__))
            conn.execute(
                insert(batch_lines),
                [
                    {
                        "batch_id": batch.id,
                        "line": line.line,
                        "custom_id": line.custom_id,
                        "body": line.body,
                        "status": "pending",
                        "result": None,
                    }
                    for line in lines
                ],
            )
        return batch

    def get(self, batch_id: str) -> Batch | None:
        with reading(self.engine) as conn:
            row = conn.execute(select(batches).where(batches.c.id == batch_id)).first()
        return _batch(row) if row else None

    def list_batches(self, owner: str | None, after: str | None, limit: int) -> list[Batch]:
        """Newest first, of one owner if given; `limit + 1` at most, after the batch `after`."""
        query = select(batches).order_by(batches.c.created_at.desc(), batches.c.id.desc())
        if owner is not None:
            query = query.where(batches.c.owner == owner)
        if after is not None and (cursor := self.get(after)) is not None:
            query = query.where(
                or_(
                    batches.c.created_at < cursor.created_at,
                    and_(batches.c.created_at == cursor.created_at, batches.c.id < cursor.id),
                )
            )
        with reading(self.engine) as conn:
            return [_batch(r) for r in conn.execute(query.limit(limit + 1))]

    def move(
        self,
        batch_id: str,
        status: str,
        *,
        only_from: tuple[str, ...],
        lease: Lease | None = None,
        empty_lines: bool = False,
        **values: Any,
    ) -> bool:
        """Set the status (and its timestamp, `<status>_at`, now) if the batch is in one of
        `only_from`, and with `lease`, still held by it; whether it was. `empty_lines`: in
        the same transaction, drop the requests and results its lines hold (it ends)."""
        stamp = f"{status}_at"
        if stamp in batches.c:
            values.setdefault(stamp, utc_now())
        where = [batches.c.id == batch_id, batches.c.status.in_(only_from)]
        if lease is not None:
            where.append(self.leases.fence(lease))
        with self.engine.begin() as conn:
            moved = conn.execute(update(batches).where(*where).values(status=status, **values))
            if moved.rowcount == 1 and empty_lines:
                conn.execute(
                    update(batch_lines)
                    .where(batch_lines.c.batch_id == batch_id)
                    .values(body={}, result=None)
                )
            return moved.rowcount == 1

    def sweep(self, cutoff: datetime) -> int:
        """Delete the lines of ended batches made before `cutoff`, and those no file holds
        (any more): pending ones, completed ones without the output file, failed ones
        without the error file; how many went."""
        ended = select(batches.c.id).where(batches.c.status.in_(ENDED))
        kept = select(files.c.id)

        def without(file_id: Any) -> Any:
            return ended.where(or_(file_id.is_(None), file_id.not_in(kept)))

        lines = batch_lines.c
        with self.engine.begin() as conn:
            return conn.execute(
                delete(batch_lines).where(
                    or_(
                        lines.batch_id.in_(ended.where(batches.c.created_at < cutoff)),
                        and_(lines.status == "pending", lines.batch_id.in_(ended)),
                        and_(
                            lines.status == "completed",
                            lines.batch_id.in_(without(batches.c.output_file_id)),
                        ),
                        and_(
                            lines.status == "failed",
                            lines.batch_id.in_(without(batches.c.error_file_id)),
                        ),
                    )
                )
            ).rowcount

    def claim(self, holder: str, ttl: timedelta) -> list[tuple[Batch, Lease]]:
        """Take the lease of every active batch that no live process holds."""
        leases = self.leases.acquire_free(holder, ttl, batches.c.status.in_(ACTIVE))
        return [(batch, lease) for lease in leases if (batch := self.get(lease.item_id))]

    def renew(self, lease: Lease, ttl: timedelta) -> Lease:
        """`LeaseLost` when another process took the batch over: stop running it."""
        return self.leases.renew(lease, ttl)

    def release(self, lease: Lease) -> None:
        self.leases.release(lease)

    def lines(self, batch_id: str, status: str | None = None) -> list[Line]:
        query = select(batch_lines).where(batch_lines.c.batch_id == batch_id)
        if status is not None:
            query = query.where(batch_lines.c.status == status)
        with reading(self.engine) as conn:
            rows = conn.execute(query.order_by(batch_lines.c.line))
            return [Line(r.line, r.custom_id, r.body, r.status, r.result) for r in rows]

    def finish_line(
        self,
        lease: Lease,
        line: int,
        *,
        ok: bool,
        result: dict[str, Any],
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Store a line's result and count it, in one transaction, under `lease`;
        `LeaseLost` (nothing stored) when another process took the batch over."""
        batch_id = lease.item_id
        counter = batches.c.completed if ok else batches.c.failed
        with self.engine.begin() as conn:
            done = conn.execute(
                update(batch_lines)
                .where(
                    batch_lines.c.batch_id == batch_id,
                    batch_lines.c.line == line,
                    batch_lines.c.status == "pending",
                )
                .values(status="completed" if ok else "failed", result=result)
            )
            if done.rowcount == 1 and not self.leases.transition(
                lease,
                conn=conn,
                **{
                    counter.name: counter + 1,
                    "input_tokens": batches.c.input_tokens + input_tokens,
                    "output_tokens": batches.c.output_tokens + output_tokens,
                },
            ):
                raise LeaseLost(batch_id)  # and the line's update rolls back
