"""Leases on background work (fine-tuning jobs, evaluation runs, batches), on SQLAlchemy
(SQLite or PostgreSQL): one worker at a time holds a work item, for a while, and proves it
with a fencing epoch.

A leased table has the three columns of `lease_columns()`: the holder (`lease_owner`, a
worker id), when the lease runs out (`lease_until`) and the epoch (`lease_epoch`), which
every acquire and every release increments. All of them are conditional updates:

- `acquire` takes an item only while no one holds it (never held, released, or run out);
- `renew` extends it only while the holder's epoch is still the item's, else `LeaseLost`
  tells the worker to stop;
- every state change a worker makes goes through `transition` (or adds `fence(lease)` to its
  own UPDATE), which matches only the holder's epoch: a worker whose lease ran out and was
  taken over can never overwrite what its successor writes.

A lease that ran out but was taken by no one is still its holder's: its epoch is unchanged,
so it renews and its writes go through. Times are the workers' clocks (UTC): keep the hosts'
clocks in step, and leases long against their skew."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    and_,
    or_,
    select,
    update,
)

from core.database import as_utc, reading, utc_now
from core.errors import ErrorCode, StackError


def lease_columns() -> list[Column]:
    """The columns of a leased table (a migration adds the same three)."""
    return [
        Column("lease_owner", String(160), nullable=True),  # the worker holding it
        Column("lease_until", DateTime(timezone=True), nullable=True),
        Column("lease_epoch", Integer, nullable=False, server_default="0"),  # fencing token
    ]


class LeaseLost(StackError):
    """Another worker took over the item (or it was released): stop working on it."""

    def __init__(self, item_id: str):
        super().__init__(
            ErrorCode.CONFLICT,
            f"{item_id} is no longer held by this worker: another one took it over",
            api_code="lease_lost",
        )
        self.item_id = item_id


@dataclass(frozen=True)
class Lease:
    item_id: str
    owner: str
    epoch: int
    until: datetime


class Leases:
    """The leases of one table, keyed by its `id` column."""

    def __init__(self, engine: Engine, table: Table):
        self.engine = engine
        self.table = table
        self.key = table.c.id

    def free(self, now: datetime) -> ColumnElement[bool]:
        """Held by no one: never held, released, or run out."""
        until = self.table.c.lease_until
        return or_(self.table.c.lease_owner.is_(None), until.is_(None), until < now)

    def fence(self, lease: Lease) -> ColumnElement[bool]:
        """The WHERE clause of a state change made under `lease`."""
        return and_(self.key == lease.item_id, self.table.c.lease_epoch == lease.epoch)

    def acquire(
        self, item_id: str, owner: str, ttl: timedelta, *where: ColumnElement[bool]
    ) -> Lease | None:
        """Take the item for `ttl` if it is free (and matches `where`); None if not."""
        now = utc_now()
        with self.engine.begin() as conn:
            return self._take(conn, item_id, owner, now, ttl, where)

    def acquire_free(
        self, owner: str, ttl: timedelta, *where: ColumnElement[bool], limit: int | None = None
    ) -> list[Lease]:
        """Take every free item that matches `where` (at most `limit`), oldest key first."""
        now = utc_now()
        query = select(self.key).where(self.free(now), *where).order_by(self.key)
        with self.engine.begin() as conn:
            ids = list(conn.execute(query.limit(limit)).scalars())
            taken = (self._take(conn, item_id, owner, now, ttl, where) for item_id in ids)
            return [lease for lease in taken if lease is not None]

    def _take(
        self,
        conn: Connection,
        item_id: str,
        owner: str,
        now: datetime,
        ttl: timedelta,
        where: tuple[ColumnElement[bool], ...],
    ) -> Lease | None:
        epoch = self.table.c.lease_epoch
        taken = conn.execute(
            update(self.table)
            .where(self.key == item_id, self.free(now), *where)
            .values(lease_owner=owner, lease_until=now + ttl, lease_epoch=epoch + 1)
        )
        if taken.rowcount != 1:
            return None
        # This transaction holds the row (SQLite's write lock, PostgreSQL's row lock).
        mine = conn.execute(select(epoch).where(self.key == item_id)).scalar_one()
        return Lease(item_id, owner, mine, now + ttl)

    def renew(self, lease: Lease, ttl: timedelta) -> Lease:
        """Extend the lease by `ttl` from now; `LeaseLost` if another worker took it over."""
        until = utc_now() + ttl
        with self.engine.begin() as conn:
            renewed = conn.execute(
                update(self.table)
                .where(self.fence(lease), self.table.c.lease_owner == lease.owner)
                .values(lease_until=until)
            )
        if renewed.rowcount != 1:
            raise LeaseLost(lease.item_id)
        return Lease(lease.item_id, lease.owner, lease.epoch, until)

    def release(self, lease: Lease) -> bool:
        """Free the item for the next worker at once. The epoch moves on, so what the
        releasing worker still tries to write is refused; False if it had lost the lease."""
        epoch = self.table.c.lease_epoch
        return self.transition(lease, lease_owner=None, lease_until=None, lease_epoch=epoch + 1)

    def transition(
        self,
        lease: Lease,
        *where: ColumnElement[bool],
        conn: Connection | None = None,
        **values: Any,
    ) -> bool:
        """Set `values` on the item only while `lease` holds it (and it matches `where`);
        whether it did. With `conn`, inside the caller's transaction."""
        statement = update(self.table).where(self.fence(lease), *where).values(**values)
        if conn is not None:
            return conn.execute(statement).rowcount == 1
        with self.engine.begin() as own:
            return own.execute(statement).rowcount == 1

    def holder(self, item_id: str) -> Lease | None:
        """Who holds the item now, if anyone (run-out leases included)."""
        t = self.table
        query = select(t.c.lease_owner, t.c.lease_epoch, t.c.lease_until).where(self.key == item_id)
        with reading(self.engine) as conn:
            row = conn.execute(query).first()
        if row is None or row.lease_owner is None:
            return None
        return Lease(item_id, row.lease_owner, row.lease_epoch, as_utc(row.lease_until))
