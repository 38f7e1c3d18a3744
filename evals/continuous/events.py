"""The loop's timeline (`evals_loop_events`): each step of a cycle, linked to what it made or
read (a drift check, an eval run, a job, a version, an alias event)."""

import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, func, select

from core.database import as_utc, reading, utc_now
from evals.tables import loop_events


class Step(StrEnum):
    DRIFT = "drift"  # ref: the drift check
    WAITING = "waiting"  # too few corrections to evaluate or train on
    EVALUATION = "evaluation"  # ref: an eval run
    DECISION = "decision"  # retrain or not, and why
    TRAINING_DATA = "training_data"  # ref: the file
    JOB = "job"  # ref: the fine-tuning job
    VERSION = "version"  # ref: the registered candidate
    GATE = "gate"  # ref: the alias event, when the gate passed
    PROMOTED = "promoted"  # ref: the alias event
    FAILED = "failed"


@dataclass(frozen=True)
class LoopEvent:
    id: int
    created_at: datetime
    cycle: str
    model: str
    policy: str
    step: Step
    ref: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class StepCount:
    """How many of a model's cycles reached a step, and when one last did."""

    model: str
    step: Step
    cycles: int
    last_at: datetime


def new_cycle_id() -> str:
    return f"cycle-{secrets.token_hex(8)}"


class LoopEvents:
    def __init__(self, engine: Engine):
        self.engine = engine

    def add(
        self,
        cycle: str,
        model: str,
        policy: str,
        step: Step,
        ref: str | None = None,
        **detail: Any,
    ) -> None:
        row = {
            "created_at": utc_now(),
            "cycle": cycle,
            "model": model,
            "policy": policy,
            "step": step.value,
            "ref": ref,
            "detail": detail,
        }
        with self.engine.begin() as conn:
            conn.execute(loop_events.insert().values(**row))

    def history(self, model: str, limit: int = 1000) -> list[LoopEvent]:
        """Oldest first."""
        query = (
            select(loop_events)
            .where(loop_events.c.model == model)
            .order_by(loop_events.c.id.desc())
            .limit(limit)
        )
        with reading(self.engine) as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)][::-1]
        return [
            LoopEvent(**{**r, "created_at": as_utc(r["created_at"]), "step": Step(r["step"])})
            for r in rows
        ]

    def steps_reached(self) -> list[StepCount]:
        """Per model and step, over the whole timeline."""
        e = loop_events.c
        query = select(
            e.model, e.step, func.count(func.distinct(e.cycle)), func.max(e.created_at)
        ).group_by(e.model, e.step)
        with reading(self.engine) as conn:
            return [
                StepCount(model, Step(step), cycles, as_utc(last))
                for model, step, cycles, last in conn.execute(query)
            ]
