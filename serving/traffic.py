"""The traffic log: every request and response, for the evaluation and drift work to read.

Rows go to the `traffic` table from a background thread in batches, so logging adds no
database round trip to a request. A redaction hook rewrites prompts and outputs before they
are stored; keys can opt out of logging altogether."""

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, Row, func, select

from core.database import as_utc, open_database, reading, utc_now
from core.redaction import Redactor
from core.settings import StackSettings
from core.tracing import tracer
from serving.tables import CHAIN, traffic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrafficRecord:
    created_at: datetime
    request_id: str
    key_id: str | None
    endpoint: str
    model: str  # as the client asked
    version: str  # the resolved version, e.g. "demo:3"
    backend: str
    prompt: str
    output: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    finish_reason: str | None
    messages: list[dict[str, str]] | None = None  # a chat request's
    end_user: str | None = None  # the request's `user`, OpenAI's end-user id


_COLUMNS = (
    "request_id",
    "prompt",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "finish_reason",
)


@dataclass(frozen=True)
class TrafficColumns:
    """Many records' fields as columns, for analysis (the drift monitor)."""

    start: datetime | None  # the first record's time
    end: datetime | None  # the last record's
    request_id: list[str]
    prompt: list[str]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    latency_ms: list[int]
    finish_reason: list[str | None]

    def __len__(self) -> int:
        return len(self.request_id)


def _record(row: Row) -> TrafficRecord:
    values = row._asdict()
    values.pop("id")
    values["created_at"] = as_utc(values["created_at"])
    return TrafficRecord(**values)


@dataclass(frozen=True)
class Retention:
    max_age: timedelta = timedelta(days=30)
    max_rows: int = 1_000_000
    every_s: float = 60.0  # how often old records are deleted


class TrafficReader:
    """Reads the traffic log. The evaluation package reads it through this (the gateway hands
    its log over; `llm-evals` opens one with `open_traffic_reader`), never the table."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def flush(self) -> None:
        """Wait for what is queued to be stored (nothing is, here: the log's writer
        overrides this), so that every read sees what was recorded before it."""

    def find(self, request_id: str, limit: int = 64) -> list[TrafficRecord]:
        """The records of a request id, oldest first, once what is queued is stored. Clients
        may choose their request ids, so several keys' requests may share one."""
        self.flush()
        stmt = select(traffic).where(traffic.c.request_id == request_id).order_by(traffic.c.id)
        with reading(self.engine) as conn:
            return [_record(row) for row in conn.execute(stmt.limit(limit))]

    def window(
        self,
        start: datetime,
        end: datetime | None = None,
        *,
        version: str | None = None,
        limit: int | None = None,
    ) -> list[TrafficRecord]:
        """Records with `start <= created_at < end`, oldest first, optionally of one version."""
        self.flush()
        stmt = select(traffic).where(traffic.c.created_at >= start).order_by(traffic.c.created_at)
        if end is not None:
            stmt = stmt.where(traffic.c.created_at < end)
        if version is not None:
            stmt = stmt.where(traffic.c.version == version)
        if limit is not None:
            stmt = stmt.limit(limit)
        with reading(self.engine) as conn:
            return [_record(row) for row in conn.execute(stmt)]

    def columns(
        self,
        version: str,
        *,
        newest: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
    ) -> TrafficColumns:
        """A version's records as columns, in the order they were stored: its `newest` ones,
        or the first `limit` with `start <= created_at < end`. Reads no more than analysis
        needs, so that a window of 100,000 records takes well under a second."""
        self.flush()
        stmt = select(traffic.c.id, *(traffic.c[name] for name in _COLUMNS))
        stmt = stmt.where(traffic.c.version == version)
        if start is not None:
            stmt = stmt.where(traffic.c.created_at >= start)
        if end is not None:
            stmt = stmt.where(traffic.c.created_at < end)
        if newest is not None:
            stmt = stmt.order_by(traffic.c.id.desc()).limit(newest)
        else:
            stmt = stmt.order_by(traffic.c.id).limit(limit)
        with reading(self.engine) as conn:
            rows = conn.execute(stmt).all()
            if not rows:
                return TrafficColumns(None, None, *([] for _ in _COLUMNS))
            if newest is not None:
                rows.reverse()
            bounds = select(traffic.c.id, traffic.c.created_at).where(
                traffic.c.id.in_({rows[0][0], rows[-1][0]})
            )
            times = dict(conn.execute(bounds).all())
        ids, *fields = (list(column) for column in zip(*rows, strict=True))
        return TrafficColumns(as_utc(times[ids[0]]), as_utc(times[ids[-1]]), *fields)

    def counts(self, since: datetime) -> dict[str, int]:
        """How many requests each version answered since then."""
        self.flush()
        stmt = (
            select(traffic.c.version, func.count())
            .where(traffic.c.created_at >= since)
            .group_by(traffic.c.version)
        )
        with reading(self.engine) as conn:
            return {version: count for version, count in conn.execute(stmt)}

    def versions(self, since: datetime) -> list[str]:
        """The versions that answered since then."""
        self.flush()
        stmt = select(traffic.c.version).where(traffic.c.created_at >= since).distinct()
        with reading(self.engine) as conn:
            return sorted(conn.execute(stmt).scalars())


def open_traffic_reader(stack: StackSettings) -> TrafficReader:
    return TrafficReader(open_database(stack.resolved_database_url, CHAIN))


class TrafficLog(TrafficReader):
    """Records are queued (up to `max_queue`; beyond it they are dropped and counted through
    `on_drop`, so a slow database never holds requests up) and written by one thread."""

    def __init__(
        self,
        engine: Engine,
        redact: Redactor | None = None,
        *,
        retention: Retention | None = None,
        on_drop: Callable[[int], None] = lambda _count: None,
        batch_size: int = 500,
        linger_s: float = 0.2,
        max_queue: int = 10_000,
    ):
        super().__init__(engine)
        self.redact = redact
        self.retention = retention or Retention()
        self.on_drop = on_drop
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._queue: queue.Queue[TrafficRecord | None] = queue.Queue(max_queue)
        self._writer = threading.Thread(target=self._write_loop, name="traffic-log", daemon=True)
        self._writer.start()

    def record(self, record: TrafficRecord) -> None:
        """Queue a record; it is stored within moments (or dropped and counted, when the
        queue is full)."""
        with tracer().start_as_current_span("traffic.write"):
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self.on_drop(1)

    def flush(self) -> None:
        """Block until every queued record is stored."""
        self._queue.join()

    def close(self) -> None:
        """Store what is queued, then stop the writer."""
        self._queue.put(None)
        self._writer.join(timeout=30)

    def prune(self, now: datetime | None = None) -> int:
        """Delete records past the retention (too old, or beyond the newest `max_rows`);
        returns how many went."""
        cutoff = (now or utc_now()) - self.retention.max_age
        with self.engine.begin() as conn:
            deleted = conn.execute(traffic.delete().where(traffic.c.created_at < cutoff)).rowcount
            oldest_kept = conn.execute(
                select(traffic.c.id)
                .order_by(traffic.c.id.desc())
                .offset(self.retention.max_rows - 1)
                .limit(1)
            ).scalar()
            if oldest_kept is not None:
                deleted += conn.execute(traffic.delete().where(traffic.c.id < oldest_kept)).rowcount
        return deleted

    def _write_loop(self) -> None:
        next_prune = 0.0
        while True:
            if time.monotonic() >= next_prune:
                self._guarded(self.prune, "could not delete old traffic records")
                next_prune = time.monotonic() + self.retention.every_s
            try:
                batch = [self._queue.get(timeout=max(0.0, next_prune - time.monotonic()))]
            except queue.Empty:
                continue
            # Gather what arrives in the next moments too: one transaction for many requests.
            deadline = time.monotonic() + self.linger_s
            while len(batch) < self.batch_size and batch[-1] is not None:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            try:
                if records:
                    self._store(records)
            except Exception:
                log.exception("could not store %d traffic records", len(records))
                self.on_drop(len(records))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(records) < len(batch):
                return

    def _store(self, records: list[TrafficRecord]) -> None:
        """Insert the batch; when that fails, each record alone, so that one bad record does
        not lose the others."""
        rows = []
        for record in records:
            try:
                rows.append(self._row(record))
            except Exception:
                log.exception("the redactor failed on a traffic record; it is dropped")
                self.on_drop(1)
        try:
            self._insert(rows)
            return
        except Exception:
            log.warning("a batch of %d traffic records failed; storing them one by one", len(rows))
        for row in rows:
            if not self._guarded(lambda row=row: self._insert([row]), "a traffic record failed"):
                self.on_drop(1)

    def _row(self, record: TrafficRecord) -> dict:
        row = asdict(record)
        if self.redact is not None:
            row["prompt"] = self.redact(row["prompt"])
            row["output"] = self.redact(row["output"])
            if row["messages"] is not None:
                row["messages"] = [
                    {**m, "content": self.redact(m["content"])} for m in row["messages"]
                ]
        return row

    def _insert(self, rows: list[dict]) -> None:
        with self.engine.begin() as conn:
            conn.execute(traffic.insert(), rows)

    @staticmethod
    def _guarded(work: Callable[[], object], what: str) -> bool:
        try:
            work()
            return True
        except Exception:
            log.exception(what)
            return False
