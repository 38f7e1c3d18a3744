"""Evaluation runs: their records (`evals_runs`) and per-example outputs (JSONL artifacts)."""

import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, select

from core.database import as_utc, open_database, reading, utc_now
from core.digests import file_digest
from core.errors import ErrorCode
from evals.errors import EvalsError
from evals.tables import CHAIN, runs


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


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


def _run(row: Row) -> EvalRun:
    values = dict(row._mapping)
    values["status"] = RunStatus(values["status"])
    values["created_at"] = as_utc(values["created_at"])
    values["finished_at"] = as_utc(values["finished_at"])
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

    @classmethod
    def open(cls, url: str, home: Path) -> "RunStore":
        return cls(open_database(url, CHAIN), home)

    def create(
        self, *, suite: str, suite_digest: str, model: str, version: str | None, target: str,
        created_by: str,
    ) -> EvalRun:  # fmt: skip
        run = EvalRun(
            id=f"evalrun-{secrets.token_hex(12)}",
            suite=suite,
            suite_digest=suite_digest,
            model=model,
            version=version,
            target=target,
            status=RunStatus.RUNNING,
            created_by=created_by,
            created_at=utc_now(),
        )
        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(**{**run.__dict__, "status": run.status.value}))
        return run

    def succeed(
        self, run: EvalRun, metrics: dict[str, dict[str, float]], examples: list[dict[str, Any]]
    ) -> EvalRun:
        """Store the per-example outputs (written in full before the record points at them),
        then the metrics."""
        relative = Path("evals") / "runs" / f"{run.id}.jsonl"
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
        return self._finish(
            run,
            status=RunStatus.SUCCEEDED.value,
            metrics=metrics,
            examples_path=str(relative),
            examples_digest=file_digest(path),
            finished_at=finished,
            seconds=(finished - run.created_at).total_seconds(),
        )

    def fail(self, run: EvalRun, error: str) -> EvalRun:
        finished = utc_now()
        return self._finish(
            run,
            status=RunStatus.FAILED.value,
            error=error,
            finished_at=finished,
            seconds=(finished - run.created_at).total_seconds(),
        )

    def _finish(self, run: EvalRun, **values: Any) -> EvalRun:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run.id).values(**values))
        return self.get(run.id)

    def get(self, run_id: str) -> EvalRun:
        with reading(self.engine) as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise run_not_found(run_id)
        return _run(row)

    def list_runs(self, limit: int = 100, version: str | None = None) -> list[EvalRun]:
        query = select(runs).order_by(runs.c.created_at.desc()).limit(limit)
        if version is not None:
            query = query.where(runs.c.version == version)
        with reading(self.engine) as conn:
            return [_run(row) for row in conn.execute(query)]

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
