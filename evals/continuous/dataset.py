"""The loop's data: recent corrections (from `/v1/feedback`, joined with the messages the
traffic log kept) split into a held-out evaluation task and training rows, and the training
set: those rows plus replayed original data."""

import hashlib
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine

from core.database import utc_now
from evals.continuous.policy import LABELLED_TASK, LabelledConfig, ReplaySpec
from evals.drift.traffic import TrafficSource
from evals.feedback.labels import corrections
from finetune.data import read_rows
from finetune.demo.skills import SKILLS, generate_splits, write_jsonl

Row = dict[str, Any]


@dataclass(frozen=True)
class Labelled:
    train: list[Row]
    held_out: list[Row]

    def __len__(self) -> int:
        return len(self.train) + len(self.held_out)


def _held_out(request_id: str, share: float) -> bool:
    """Deterministic by request id: a correction stays on its side in every cycle."""
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) < share * 0x1_0000_0000


def labelled_rows(
    engine: Engine, traffic: TrafficSource, versions: list[str], config: LabelledConfig
) -> Labelled:
    """Chat rows (the request's messages, then the corrected answer) for the corrections that
    may train (see `corrections`) given on these versions' answers; requests without messages
    (completions) are left out."""
    train, held_out = [], []
    since = utc_now() - timedelta(hours=config.since_hours)
    found = corrections(
        engine, versions, since, approved_only=config.review, max_per_key=config.max_per_key
    )
    for fixed in found:
        record = next(
            (r for r in traffic.find(fixed.request_id) if r.version == fixed.version), None
        )
        if record is None or not record.messages:
            continue
        row = {
            "messages": [*record.messages, {"role": "assistant", "content": fixed.correction}],
            "request_id": fixed.request_id,
        }
        (held_out if _held_out(fixed.request_id, config.holdout) else train).append(row)
    return Labelled(train, held_out)


def write_labelled_suite(folder: Path, rows: list[Row], max_tokens: int) -> Path:
    """A suite of one task, `labelled`, scoring exact match on the held-out corrections."""
    data = folder / "labelled.jsonl"
    write_jsonl(data, rows)
    suite = folder / "labelled.yaml"
    task = {
        "name": LABELLED_TASK,
        "description": "Recent answers users corrected through /v1/feedback (held out).",
        "data": {"path": data.name, "count": len(rows)},
        "generation": {"max_tokens": max_tokens},
        "metrics": ["exact_match"],
    }
    suite.write_text(yaml.safe_dump({"name": LABELLED_TASK, "tasks": [task]}, sort_keys=False))
    return suite


def replay_rows(spec: ReplaySpec) -> list[Row]:
    if spec.demo is not None:
        return generate_splits(SKILLS[spec.demo], seed=0, num_train=spec.rows, num_eval=0)[0]
    assert spec.path is not None
    return [row for _, row in read_rows(spec.path)[: spec.rows]]


def write_training_set(folder: Path, labelled: list[Row], replay: list[ReplaySpec]) -> Path:
    """Corrections and replayed rows, shuffled (the same way for the same rows)."""
    labelled = sorted(labelled, key=lambda r: r["request_id"])  # arrival order varies
    rows = [{"messages": r["messages"]} for r in labelled]
    for spec in replay:
        rows += [{"messages": r["messages"]} for r in replay_rows(spec)]
    random.Random(len(rows)).shuffle(rows)
    path = folder / "train.jsonl"
    write_jsonl(path, rows)
    return path
