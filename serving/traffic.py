"""The traffic log: every request and response, for the evaluation and drift work to read.

Rows go to the `traffic` table from a background thread in batches, so logging adds no
database round trip to a request. A redaction hook rewrites prompts and outputs before they
are stored; keys can opt out of logging altogether."""

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Engine, Row, select

from core.database import as_utc
from core.plugins import load_plugin
from serving.tables import traffic

log = logging.getLogger(__name__)
Redactor = Callable[[str], str]

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_LONG_NUMBER = re.compile(r"\b(?:\d[ -]?){9,}\d\b")  # card, phone and account numbers


def redact_pii(text: str) -> str:
    """Replace e-mail addresses and long digit runs (10 or more digits) with placeholders."""
    return _LONG_NUMBER.sub("[NUMBER]", _EMAIL.sub("[EMAIL]", text))


def load_redactor(spec: str | None) -> Redactor | None:
    """None, 'pii' (the built-in `redact_pii`) or 'package.module:callable'."""
    if not spec:
        return None
    if spec == "pii":
        return redact_pii
    return load_plugin(spec, "traffic.redactor")


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


def _record(row: Row) -> TrafficRecord:
    values = row._asdict()
    values.pop("id")
    values["created_at"] = as_utc(values["created_at"])
    return TrafficRecord(**values)


class TrafficLog:
    def __init__(
        self,
        engine: Engine,
        redact: Redactor | None = None,
        batch_size: int = 500,
        linger_s: float = 0.2,
    ):
        self.engine = engine
        self.redact = redact
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._queue: queue.Queue[TrafficRecord | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="traffic-log", daemon=True)
        self._writer.start()

    def record(self, record: TrafficRecord) -> None:
        """Queue a record; it is stored within moments."""
        self._queue.put(record)

    def flush(self) -> None:
        """Block until every queued record is stored."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=30)

    def window(
        self,
        start: datetime,
        end: datetime | None = None,
        *,
        version: str | None = None,
        limit: int | None = None,
    ) -> list[TrafficRecord]:
        """Records with `start <= created_at < end`, oldest first, optionally of one version."""
        stmt = select(traffic).where(traffic.c.created_at >= start).order_by(traffic.c.created_at)
        if end is not None:
            stmt = stmt.where(traffic.c.created_at < end)
        if version is not None:
            stmt = stmt.where(traffic.c.version == version)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(stmt)]

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
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
                    self._insert(records)
            except Exception:
                log.exception("could not store %d traffic records; they are dropped", len(records))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(records) < len(batch):
                return

    def _insert(self, records: list[TrafficRecord]) -> None:
        rows = []
        for record in records:
            row = asdict(record)
            if self.redact is not None:
                row["prompt"] = self.redact(row["prompt"])
                row["output"] = self.redact(row["output"])
            rows.append(row)
        with self.engine.begin() as conn:
            conn.execute(traffic.insert(), rows)
