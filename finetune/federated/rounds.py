"""The coordinator's round state in the job folder (`rounds/`): after each completed round the
global adapter's tensors and the round's record, written atomically and durably (each file
fsynced before its rename, the folder after it), so that a restarted coordinator, even after
a power loss, resumes after the last completed round."""

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

STATE_FILE = "state.json"


@dataclass(frozen=True)
class SiloReport:
    """What one silo said about its round: no data, only these numbers."""

    silo_id: str
    data_digest: str
    num_examples: int
    train_loss: float


@dataclass(frozen=True)
class RoundRecord:
    round: int
    train_loss: float  # the silos' losses weighted by their example counts
    num_examples: int
    silos: list[SiloReport]
    failures: int  # silos sampled whose results did not come
    bytes_sent: int  # adapter bytes the coordinator sent to silos
    bytes_received: int  # bytes of every reply the coordinator received
    seconds: float
    epsilon: float | None = None  # cumulative DP epsilon after this round
    rejected: list[str] = field(default_factory=list)  # why results were not aggregated

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RoundRecord":
        return cls(**{**data, "silos": [SiloReport(**s) for s in data["silos"]]})


@dataclass
class RoundLog:
    folder: Path
    records: list[RoundRecord] = field(default_factory=list)

    @classmethod
    def open(cls, job_dir: Path) -> "RoundLog":
        folder = job_dir / "rounds"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / STATE_FILE
        if not path.exists():
            return cls(folder)
        data = json.loads(path.read_text())
        return cls(folder, [RoundRecord.from_json(r) for r in data["rounds"]])

    @property
    def completed(self) -> int:
        return self.records[-1].round if self.records else 0

    def arrays(self) -> list[np.ndarray] | None:
        """The global adapter after the last completed round (None before the first)."""
        if not self.records:
            return None
        with np.load(self.folder / _arrays_file(self.completed)) as stored:
            return [stored[f"t{i}"] for i in range(len(stored.files))]

    def complete(self, record: RoundRecord, arrays: list[np.ndarray]) -> None:
        """Persist a completed round: its tensors first, then the record that points at them."""
        previous = self.completed
        with _durable(self.folder / _arrays_file(record.round)) as output:
            np.savez(output, **{f"t{i}": a for i, a in enumerate(arrays)})
        self.records.append(record)
        state = {"rounds": [asdict(r) for r in self.records]}
        with _durable(self.folder / STATE_FILE) as output:
            output.write(json.dumps(state, indent=1).encode())
        if previous:
            (self.folder / _arrays_file(previous)).unlink(missing_ok=True)


@contextlib.contextmanager
def _durable(path: Path) -> Iterator[BinaryIO]:
    """A file written in full or not at all, on disk before the `with` ends: written to a
    temporary name, fsynced, renamed over `path`, and the folder fsynced for the rename."""
    tmp = path.with_name(f"{path.name}.tmp")
    with tmp.open("wb") as output:
        yield output
        output.flush()
        os.fsync(output.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _arrays_file(round_: int) -> str:
    return f"global-{round_:04d}.npz"
