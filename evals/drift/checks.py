"""Drift checks as stored in `evals_drift_checks`: what was compared, each signal's effect
and p-value, and the decision."""

import secrets
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, func, select

from core.database import as_utc, reading
from core.errors import ErrorCode
from evals.drift.signals import SignalResult
from evals.errors import EvalsError
from evals.tables import drift_checks


@dataclass(frozen=True)
class DriftCheck:
    id: str
    created_at: datetime
    model: str
    version: str
    window_start: datetime
    window_end: datetime
    window_n: int
    reference: dict[str, Any]  # kind (traffic or data), its bounds or files, its size
    signals: list[SignalResult]
    score: float
    drifted: bool
    alarms: list[str]

    def signal(self, name: str) -> SignalResult | None:
        return next((s for s in self.signals if s.signal == name), None)


def new_check_id() -> str:
    return f"drift-{secrets.token_hex(12)}"


def _check(row: Row) -> DriftCheck:
    values = dict(row._mapping)
    for column in ("created_at", "window_start", "window_end"):
        values[column] = as_utc(values[column])
    values["signals"] = [SignalResult(**s) for s in values["signals"]]
    return DriftCheck(**values)


class DriftStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def record(self, check: DriftCheck) -> DriftCheck:
        row = asdict(check)
        with self.engine.begin() as conn:
            conn.execute(drift_checks.insert().values(**row))
        return check

    def get(self, check_id: str) -> DriftCheck:
        with reading(self.engine) as conn:
            row = conn.execute(select(drift_checks).where(drift_checks.c.id == check_id)).first()
        if row is None:
            raise EvalsError(
                ErrorCode.NOT_FOUND,
                f"no drift check {check_id!r}; `llm-evals drift list MODEL` shows the checks",
                param="check_id",
            )
        return _check(row)

    def last_checked(self) -> dict[str, datetime]:
        """When each model's newest check was made."""
        query = select(drift_checks.c.model, func.max(drift_checks.c.created_at)).group_by(
            drift_checks.c.model
        )
        with reading(self.engine) as conn:
            return {model: as_utc(at) for model, at in conn.execute(query)}

    def history(
        self, model: str, *, since: datetime | None = None, limit: int = 10_000
    ) -> list[DriftCheck]:
        """A model's checks (all its versions), oldest first."""
        query = select(drift_checks).where(drift_checks.c.model == model)
        if since is not None:
            query = query.where(drift_checks.c.created_at >= since)
        query = query.order_by(drift_checks.c.created_at.desc()).limit(limit)
        with reading(self.engine) as conn:
            return [_check(row) for row in conn.execute(query)][::-1]
